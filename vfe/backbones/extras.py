"""Backbones whose library is an optional extra import it through here, so a missing one is a
one-line error naming the extra to install (and `--help` works without any of them)."""

import importlib
from types import ModuleType
from typing import Literal

from vfe.data.input_spec import FrameSampling
from vfe.errors import VfeError


def import_extra(module: str, extra: str, model: str, command: str | None = None) -> ModuleType:
    """`import module`, or a VfeError saying `pip install -e '.[extra]'` (naming `--model
    model`, or `vfe command` where a command needs it)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        user = f"vfe {command}" if command is not None else f"--model {model}"
        raise VfeError(
            f"{user} needs the {extra!r} extra, which is not installed: "
            f"pip install -e '.[{extra}]' ({error})"
        ) from error


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
