"""Options image backbones share: `--model.frames_per_clip` (every frame, N spread uniformly, or
the middle frame). Optional libraries are imported through `vfe.optional`."""

from typing import Literal

from vfe.data.input_spec import FrameSampling
from vfe.errors import VfeError

FramesPerClip = int | Literal["middle"] | None


def frames_of_clip(frames: FramesPerClip) -> tuple[int | None, FrameSampling]:
    """The `--model.frames_per_clip` of image backbones -> InputSpec's `frames_per_clip` and
    `frame_sampling`: None (every frame), N >= 1 (N spread uniformly) or "middle" (the one
    frame on screen at the clip's middle, as FFmpeg's `fps=1/clip_len` picks it)."""
    if frames == FrameSampling.MIDDLE.value:
        return 1, FrameSampling.MIDDLE
    if frames is not None and (
        isinstance(frames, bool) or not isinstance(frames, int) or frames < 1
    ):
        raise VfeError(
            f"--model.frames_per_clip must be a positive integer, 'middle' or unset (every "
            f"frame), got {frames!r}"
        )
    return frames, FrameSampling.UNIFORM
