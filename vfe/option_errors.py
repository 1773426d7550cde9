"""`vfe predict`'s option errors in one line.

jsonargparse answers a mistyped option with the whole usage (60+ lines) and, for a backbone's
option, every type of the Union it tried. vfe says what was wrong, names the closest option
(`difflib`), and exits 2 like every usage error (`vfe: error: ...`).
"""

import difflib
import inspect
import re
from importlib import import_module
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from vfe.errors import VfeError

HELP = "vfe predict --help lists every option"


class OneLineErrors(LightningArgumentParser):
    """A LightningCLI parser whose final error is one `VfeError`; the errors jsonargparse
    raises and handles itself (trying the types of a Union) are left as they are."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        raise VfeError(one_line(message, parser))


def one_line(message: str, parser: Any) -> str:
    """jsonargparse's `message` as one line naming the bad option and the closest good one."""
    if unknown := re.search(r"nrecognized arguments: (\S+)", message):
        bad = unknown[1]
        names = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
        return f"unknown option {bad}{did_you_mean(bad, names)}"
    option = re.search(r"Option '([^']+)' is not accepted", message)
    class_path = re.search(r"given class_path '([^']+)'", message)
    key = re.search(r'Parser key "([^"]+)"', message)
    if option and class_path:
        prefix = f"--{key[1] if key else 'model'}."
        owner = class_path[1].rsplit(".", 1)[-1]
        if owner == "MultiBackbone":  # `--model clip,slowfast --model.weights x`
            return (
                f"{prefix}{option[1]}: with several backbones each takes its own options, "
                f"{prefix}NAME.{option[1]} (e.g. {prefix}clip.{option[1]})"
            )
        bad, names = prefix + option[1], [prefix + name for name in init_parameters(class_path[1])]
        return f"unknown option {bad} for {owner}{did_you_mean(bad, names)}"
    nested = re.search(r"given class_path '[^']+':\s*Parser key \"([^\"]+)\":\s*(.+)", message)
    if nested and key:  # a backbone's option with a bad value: `--model.recipe heros`
        return f"--{key[1]}.{nested[1]}: {readable(nested[2].strip())} ({HELP})"
    if (required := re.search(r"required: (\S+)", message)) and required[1].endswith("model"):
        return "no backbone given: add --model NAME (vfe predict --help lists them)"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if key and len(lines) > 1:  # `Parser key "clip_len": Expected a float. Got value: abc`
        return f"--{key[1]}: {lines[1]}"
    return f"{lines[0] if lines else message} ({HELP})"


def readable(problem: str) -> str:
    """`Expected a typing.Literal['vfe', 'hero']. Got value: x` -> `expected one of vfe, hero,
    got x`."""
    choices = re.fullmatch(r"Expected a typing\.Literal\[(.+)\]\. Got value: (.+)", problem)
    if choices:
        return f"expected one of {choices[1].replace(chr(39), '')}, got {choices[2]}"
    return problem


def did_you_mean(bad: str, names: list[str]) -> str:
    close = difflib.get_close_matches(bad, names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}? ({HELP})" if close else f" ({HELP})"


def init_parameters(class_path: str) -> list[str]:
    """The options a backbone class takes (its `__init__`'s parameters)."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        backbone = getattr(import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return []
    return [name for name in inspect.signature(backbone).parameters if name != "self"]
