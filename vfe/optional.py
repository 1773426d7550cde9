"""Optional libraries (the extras in pyproject.toml): imported through here, so a missing one is
a one-line error naming the extra to install. Below every part of vfe that needs one (backbones,
`vfe pack`); imports nothing heavy, so `--help` stays fast."""

import importlib
from types import ModuleType

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
