"""Frames -> samples under an FFmpeg recipe (`vfe.data.input_spec.FfmpegRecipe`): the rows and
frames of HERO's extractors, which made the released QVHighlights features.

HERO decodes each video with `ffmpeg -vf fps=R,scale,crop -pix_fmt rgb24` and cuts the frames
it gets into rows its own way, not on vfe's clip grid:
- SlowFast (`clip_span_frames`): clips of `clip_len * R` frames; the video padded by repeating
  its last frame to a whole second, then that last second to a whole number of p seconds
  (`clip_len = p/q`: 2 for 2-s clips, 3 for HERO's default 3/2); per clip `frames_per_clip`
  indices `linspace(0, span - 1)` with `span = clip_span_frames * floor(source fps) / R` (the
  *source's* rate), clamped to the clip, truncated; `ceil(duration / clip_len)` rows,
  `duration` being the stream's.
- CLIP: one row per frame of `fps = 1 / clip_len` (`2 / max(int(duration), 1)` for a video
  shorter than clip_len + 0.1 s).
"""

import math
from collections import deque
from fractions import Fraction

import numpy as np
import torch

from vfe.data.input_spec import FfmpegRecipe, InputSpec, RecipeRows, is_audio
from vfe.data.records import Samples
from vfe.data.samples import Destination, Emitter
from vfe.decoding.ffmpeg_filters import FilteredFrames
from vfe.decoding.video import Frame, StreamFacts
from vfe.errors import VfeError


def recipe_frame_rate(
    recipe: FfmpegRecipe, clip_len: Fraction, duration_seconds: Fraction | None
) -> Fraction:
    """The fps filter's rate for one video (HERO's CLIP rule for short videos)."""
    if recipe.frame_rate_hz is not None:
        return recipe.frame_rate_hz
    if duration_seconds is not None and 0 < duration_seconds < clip_len + Fraction(1, 10):
        return Fraction(2, max(int(duration_seconds), 1))
    return 1 / clip_len


def hero_sample_indices(
    num_samples: int, span_frames: int, source_fps: int, frame_rate_hz: Fraction, clip_frames: int
) -> list[int]:
    """HERO's temporal sampling of one clip of `clip_frames` frames (float32 `linspace`,
    clamp to the clip, truncation): `linspace(0, span_frames * source_fps / rate - 1)`."""
    span = span_frames * source_fps / float(frame_rate_hz)
    index = torch.linspace(0, span - 1, num_samples).clamp(0, clip_frames - 1)
    return index.long().tolist()


def hero_padded_length(num_frames: int, frames_per_second: int, seconds_multiple: int) -> int:
    """Frames after HERO's padding: to whole seconds, then to a whole number of
    `seconds_multiple` seconds (clip_len's numerator: 2-s clips pad to even seconds)."""
    seconds = math.ceil(num_frames / frames_per_second)
    return math.ceil(seconds / seconds_multiple) * seconds_multiple * frames_per_second


def hero_padding_source(position: int, num_frames: int, frames_per_second: int) -> int:
    """The frame HERO's padding puts at `position`: itself; past the end, the last frame up to
    a whole second; past that second, that last second again and again (`_pad_clips` tiles
    the last second, not the last frame)."""
    whole_seconds = math.ceil(num_frames / frames_per_second) * frames_per_second
    if position >= whole_seconds:
        position = (
            whole_seconds - frames_per_second + (position - whole_seconds) % frames_per_second
        )
    return min(position, num_frames - 1)


def recipe_rows_limit(
    recipe: FfmpegRecipe, clip_len: Fraction, duration_seconds: Fraction | None
) -> int | None:
    """The most rows a video may have (None: no limit)."""
    if recipe.rows is RecipeRows.DURATION and duration_seconds is not None and duration_seconds > 0:
        return math.ceil(float(duration_seconds) / float(clip_len))
    return None


class FilteredSamples(Emitter):
    """One backbone's samples under its FFmpeg recipe: frames through FFmpeg's filters, rows
    as the recipe cuts them (module doc). Only the current clip's filtered frames are held
    (at the backbone's size). `rows` is the video's row count once `finish` ran."""

    def __init__(
        self,
        destination: Destination,
        spec: InputSpec,
        clip_len: Fraction,
        facts: StreamFacts,
    ) -> None:
        super().__init__(destination, convert=None)
        recipe = spec.ffmpeg_recipe
        self.spec, self.recipe = spec, recipe
        self.row_seconds = 1 / recipe_frame_rate(recipe, clip_len, facts.duration_seconds)
        rate = 1 / self.row_seconds
        self.filtered = FilteredFrames(
            rate, recipe.short_side, recipe.crop_size, scale_from=(facts.width, facts.height)
        )
        self.clip_frames = 1
        self.picks: list[int] = [0]
        self.pad_seconds_to = 1  # HERO pads to a whole number of these seconds
        self.frames_per_second = 1
        if recipe.clip_span_frames is not None:
            self.row_seconds = clip_len
            self.clip_frames = int(clip_len * rate)
            self.pad_seconds_to = clip_len.numerator  # 2 for 2-s clips, 3 for 1.5-s ones
            self.frames_per_second = int(rate)
            source_fps = math.floor(facts.average_rate_hz or 0)
            self.picks = hero_sample_indices(
                spec.frames_per_clip, recipe.clip_span_frames, source_fps, rate, self.clip_frames
            )
        self.limit = recipe_rows_limit(recipe, clip_len, facts.duration_seconds)
        self.rows = 0
        self._clip: list[np.ndarray] = []  # filtered frames of the clip being filled
        self._num_frames = 0  # filtered frames so far
        # The latest frames: the padding repeats the last second, which may start in a clip
        # already sent.
        self._recent: deque[np.ndarray] = deque(maxlen=self.frames_per_second + self.clip_frames)

    def add(self, frame: Frame, clip_index: int) -> None:
        """`clip_index` (vfe's grid) is not used: the recipe cuts its own rows."""
        picture = frame.decoded()
        if picture is None:
            raise RuntimeError(
                "an FFmpeg recipe needs the decoder's pictures (--data.decoder pyav)"
            )
        # Times from the first frame, as the `ffmpeg` command gives them to its filters.
        picture.pts = round(frame.time_seconds / picture.time_base)
        if frame.duration_seconds:
            picture.duration = round(frame.duration_seconds / picture.time_base)
        self._take(self.filtered.push(picture))

    def finish(self) -> None:
        self._take(self.filtered.push(None))
        if self._clip:  # HERO's padding ("tile") completes the last clips
            count = self._num_frames
            first_sent = count - len(self._clip)  # the first frame not sent yet
            held = {count - len(self._recent) + i: f for i, f in enumerate(self._recent)}
            padded = hero_padded_length(count, self.frames_per_second, self.pad_seconds_to)
            self._clip = []
            for position in range(first_sent, padded):
                source = hero_padding_source(position, count, self.frames_per_second)
                self._clip.append(held[source])
                if len(self._clip) == self.clip_frames:
                    self._emit()
        self.rows = self.rows if self.limit is None else min(self.rows, self.limit)

    def _take(self, pictures: list[np.ndarray]) -> None:
        for picture in pictures:
            self._clip.append(picture)
            self._recent.append(picture)
            self._num_frames += 1
            if len(self._clip) == self.clip_frames:
                self._emit()

    def _emit(self) -> None:
        row = self.rows
        clip, self._clip = self._clip, []
        self.rows += 1
        if self.limit is not None and row >= self.limit:
            return  # a row HERO drops: past the stream's duration
        frames = torch.from_numpy(np.stack([clip[i] for i in self.picks])).permute(0, 3, 1, 2)
        if self.spec.stack_frames:  # (T, C, H, W) -> (1, C, T, H, W)
            frames = frames.permute(1, 0, 2, 3).unsqueeze(0)
        self.send(Samples(frames.contiguous(), None), [row] * len(frames))


def check_recipe_settings(
    specs: dict[str, InputSpec],
    clip_len: Fraction,
    decoder: str,
    decode_device: str,
    clip_stride_seconds: float | None,
) -> None:
    """One-line errors for settings an FFmpeg recipe (or an audio backbone) cannot run with."""
    for name, spec in specs.items():
        if is_audio(spec):
            if decoder != "pyav":
                raise VfeError(
                    f"--model {name} places the audio by the video's first frame, which only "
                    f"--data.decoder pyav gives, not {decoder}"
                )
            continue
        recipe = spec.ffmpeg_recipe
        if recipe is None:
            continue
        flag = f"--model.recipe {recipe.name} ({name})"
        if decoder != "pyav":
            raise VfeError(
                f"{flag} runs FFmpeg's filters on the decoded pictures, which only --data.decoder "
                f"pyav hands over, not {decoder}"
            )
        if decode_device != "cpu":
            raise VfeError(f"{flag} decodes on the CPU; drop --data.decode_device {decode_device}")
        if clip_stride_seconds is not None:
            raise VfeError(f"{flag} cuts its own rows; drop --clip_stride")
        if recipe.clip_span_frames is not None:
            frames = clip_len * recipe.frame_rate_hz
            if frames.denominator != 1:
                raise VfeError(
                    f"{flag} cuts clips of whole frames at {recipe.frame_rate_hz} fps; "
                    f"--clip_len {float(clip_len)} is {float(frames):g} frames (HERO's clip "
                    "lengths: 2 for the released features, 1.5 its default)"
                )
