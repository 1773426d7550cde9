"""Backbones whose library is an optional extra import it through here, so a missing one is a
one-line error naming the extra to install (and `--help` works without any of them)."""

import importlib
from types import ModuleType

from vfe.errors import VfeError


def import_extra(module: str, extra: str, model: str) -> ModuleType:
    """`import module`, or a VfeError saying `pip install -e '.[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise VfeError(
            f"--model {model} needs the {extra!r} extra, which is not installed: "
            f"pip install -e '.[{extra}]' ({error})"
        ) from error


def check_frames_per_clip(frames: int | None) -> None:
    """The `--model.frames_per_clip` of image backbones: None (every frame) or N >= 1."""
    if frames is not None and (not isinstance(frames, int) or frames < 1):
        raise VfeError(
            f"--model.frames_per_clip must be a positive integer or unset (every frame), "
            f"got {frames!r}"
        )
