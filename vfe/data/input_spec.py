"""What a backbone asks of the data path: which frames of a clip, resized how, normalised how.

The data path reads only this; it never imports a backbone.
"""

from dataclasses import asdict, dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any

from torchvision.transforms import InterpolationMode


class ResizeMode(StrEnum):
    """How a frame is scaled before the crop (open_clip's and timm's names)."""

    SHORTEST = "shortest"  # keep the aspect ratio, cover the target size
    SQUASH = "squash"  # scale each side to the target, aspect ratio not kept


class FrameSampling(StrEnum):
    """Which frames of a clip a backbone gets when it asks for `frames_per_clip` of them."""

    UNIFORM = "uniform"  # spread evenly, first and last included (PyTorchVideo's rule)
    # One frame: the one on screen just before the clip's middle, the frame FFmpeg's
    # `fps=1/clip_len` filter outputs for the clip (the released Moment-DETR/HERO CLIP features).
    MIDDLE = "middle"


Size = int | tuple[int, int]


class RecipeRows(StrEnum):
    """How many rows a video gets under an FFmpeg recipe."""

    # ceil(stream duration / clip_len), at most the clips the frames fill (HERO's SlowFast);
    # every clip the frames fill where the stream gives no duration
    DURATION = "duration"
    FRAMES = "frames"  # one row per frame the fps filter outputs (HERO's CLIP)


@dataclass(frozen=True)
class FfmpegRecipe:
    """Frames made by FFmpeg's filters rather than vfe's clip grid: a released-feature recipe
    (HERO's extractors, `vfe.data.recipe_samples`), declared by the backbone as data.

    Each video goes through `fps=frame_rate_hz`, a bicubic `scale` of the short side to
    `short_side` (the long side `int(long * short_side / short)`, from the stream's coded size),
    a centre `crop` of `crop_size` and RGB24 (`vfe.decoding.ffmpeg_filters`).

    frame_rate_hz: the fps filter's rate; None: 1 / clip_len, one frame (and row) per clip,
        or, for a video shorter than clip_len + 0.1 s, `2 / max(int(duration), 1)` (HERO's CLIP).
    clip_span_frames: for clips of frames (a video backbone): clip_len * frame_rate_hz frames
        per clip, the last clip padded as HERO pads (`vfe.data.recipe_samples`); the backbone's
        `frames_per_clip` samples are `linspace(0, span - 1)` with
        `span = clip_span_frames * floor(source fps) / frame_rate_hz`, clamped to the clip,
        truncated (HERO's SlowFast: 64 = 32 frames x sampling rate 2). None: every frame is a
        sample of its own row.
    rows: see RecipeRows.
    """

    name: str
    short_side: int
    crop_size: int
    rows: RecipeRows
    frame_rate_hz: Fraction | None = None
    clip_span_frames: int | None = None

    def record(self) -> dict[str, Any]:
        """As recorded in provenance."""
        record = asdict(self)
        rate = self.frame_rate_hz
        record["frame_rate_hz"] = None if rate is None else str(rate)
        record["rows"] = self.rows.value
        return record


def as_height_width(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@dataclass(frozen=True)
class InputSpec:
    """How a backbone wants its clips.

    frames_per_clip: None: every frame of the clip; N: N frames spread uniformly over the clip
        (PyTorchVideo's `UniformTemporalSubsample` rule).
    frame_sampling: MIDDLE (with frames_per_clip 1): the frame on screen at the clip's middle,
        as FFmpeg's fps filter picks it, instead of the clip's first frame.
    resize_size, resize_mode: SHORTEST with an int S scales the short side to S and the long
        side to `int(long * S / short)` (torchvision's `Resize(S)`); SHORTEST with `(h, w)`
        scales by the smaller of `H / h`, `W / w`, rounding (timm's and open_clip's
        `ResizeKeepRatio`); SQUASH scales to exactly `(h, w)` (an int S: `(S, S)`).
    crop_size: the central `(h, w)` (an int: a square) taken after resizing; None: no crop
        (SQUASH only, so every sample has one size).
    interpolation, antialias: of the resize, on uint8 (torchvision's antialiased bicubic and
        bilinear equal PIL's).
    mean, std: per-channel normalisation of `pixels / 255`, applied on the model's device.
    ffmpeg_recipe: frames made by FFmpeg's filters as a released recipe made them
        (`FfmpegRecipe`); the resize, crop and frame choice above are then not used.
    stack_frames: False for image backbones: each frame is one sample `(C, H, W)` and the clip
        feature is the mean over them. True for video backbones: the N frames form one sample
        `(C, N, H, W)` (needs frames_per_clip).
    default_batch_size: samples per forward pass when no batch size is given.
    """

    frames_per_clip: int | None
    resize_size: Size
    crop_size: Size | None
    interpolation: InterpolationMode
    antialias: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_batch_size: int
    stack_frames: bool = False
    resize_mode: ResizeMode = ResizeMode.SHORTEST
    frame_sampling: FrameSampling = FrameSampling.UNIFORM
    ffmpeg_recipe: FfmpegRecipe | None = None

    def __post_init__(self) -> None:
        if self.frame_sampling is FrameSampling.MIDDLE and self.frames_per_clip != 1:
            raise ValueError("middle frame sampling takes one frame per clip")
        if self.stack_frames and self.frames_per_clip is None:
            raise ValueError("stack_frames needs frames_per_clip")
        if self.crop_size is None and self.resize_mode is not ResizeMode.SQUASH:
            raise ValueError("a shortest-side resize needs a crop_size (samples must share a size)")

    @property
    def sample_size(self) -> tuple[int, int]:
        """`(height, width)` of every sample."""
        if self.crop_size is None:
            return as_height_width(self.resize_size)
        return as_height_width(self.crop_size)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """`(height, width)` a `height x width` frame is scaled to before the crop."""
        target_height, target_width = as_height_width(self.resize_size)
        if self.resize_mode is ResizeMode.SQUASH:
            return target_height, target_width
        if target_height == target_width:  # torchvision's Resize(int), as both libraries use
            short, long = sorted((height, width))
            new_long = int(target_height * long / short)
            return (target_height, new_long) if height <= width else (new_long, target_height)
        ratio = min(height / target_height, width / target_width)
        return round(height / ratio), round(width / ratio)

    def recipe(self) -> dict[str, Any]:
        """The preprocessing as recorded in provenance (a square shortest-side resize keeps the
        keys files made before other modes existed carry, so they still match)."""
        if self.resize_mode is ResizeMode.SHORTEST and isinstance(self.resize_size, int):
            resize: dict[str, Any] = {"short_side_size": self.resize_size}
        else:
            resize = {
                "resize_mode": self.resize_mode.value,
                "resize_size": list(as_height_width(self.resize_size)),
            }
        crop = self.crop_size
        # Recorded only when not uniform, so files made before the option existed still match.
        sampling = {}
        if self.frame_sampling is not FrameSampling.UNIFORM:
            sampling = {"frame_sampling": self.frame_sampling.value}
        # Recorded only when used, so files made before recipes existed still match.
        recipe = {}
        if self.ffmpeg_recipe is not None:
            recipe = {"ffmpeg_recipe": self.ffmpeg_recipe.record()}
        return {
            "frames_per_clip": self.frames_per_clip,
            **sampling,
            **recipe,
            **resize,
            "crop_size": crop if crop is None or isinstance(crop, int) else list(crop),
            "interpolation": self.interpolation.value,
            "antialias": self.antialias,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class AudioSpec:
    """How an audio backbone wants its clips: each clip's window of the video's audio, mono at
    `sample_rate_hz`, one `(window_samples,) float32` sample per clip (`vfe.decoding.audio`).

    The windows are the video backbones' clips, so the rows line up with theirs; a window past
    the end of the audio is zeros.
    """

    sample_rate_hz: int
    default_batch_size: int
    resampler: str = "swresample"  # FFmpeg's (PyAV's AudioResampler), or "soxr_hq" (librosa's)

    def recipe(self) -> dict[str, Any]:
        """The preprocessing as recorded in provenance."""
        return {
            "audio": "mono",
            "sample_rate_hz": self.sample_rate_hz,
            "resampler": self.resampler,
            "window": "the clip, zero-padded where there is no audio",
        }


def is_audio(spec: "InputSpec | AudioSpec") -> bool:
    return isinstance(spec, AudioSpec)
