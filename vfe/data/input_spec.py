"""What a backbone asks of the data path: which frames of a clip, resized how, normalised how.

The data path reads only this; it never imports a backbone.
"""

from dataclasses import dataclass

from torchvision.transforms import InterpolationMode


@dataclass(frozen=True)
class InputSpec:
    """How a backbone wants its clips.

    frames_per_clip: None: every frame of the clip; N: N frames spread uniformly over the clip
        (PyTorchVideo's `UniformTemporalSubsample` rule).
    stack_frames: False for image backbones: each frame is one sample `(C, H, W)` and the clip
        feature is the mean over them. True for video backbones: the N frames form one sample
        `(C, N, H, W)` (needs frames_per_clip).
    short_side_size, crop_size, interpolation, antialias: resize the short side, then center crop.
    mean, std: per-channel normalisation of `pixels / 255`, applied on the model's device.
    default_batch_size: samples per forward pass when no batch size is given.
    """

    frames_per_clip: int | None
    short_side_size: int
    crop_size: int
    interpolation: InterpolationMode
    antialias: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_batch_size: int
    stack_frames: bool = False

    def __post_init__(self) -> None:
        if self.stack_frames and self.frames_per_clip is None:
            raise ValueError("stack_frames needs frames_per_clip")
