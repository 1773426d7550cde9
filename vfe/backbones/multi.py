"""Several backbones fed from one decode: `--model clip,slowfast`.

The datamodule reads each member's InputSpec, decodes every frame once and resizes it once per
backbone that wants it; each member gets batches of its own size and writes its own folder. No
member is special: a new backbone works here as soon as it is registered.
"""

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator
from importlib import import_module
from typing import Any, Literal, get_args, get_origin, get_type_hints

from torch import nn

from vfe.backbones.base import Backbone, Extractor
from vfe.backbones.registry import resolve_model
from vfe.data.input_spec import InputSpec
from vfe.errors import VfeError

BATCH_SIZE_OPTION = "batch_size"


def build_backbone(name: str, options: dict[str, Any]) -> Backbone:
    """The registered (or class-path) backbone `name` built with `options`."""
    module_name, class_name = resolve_model(name).rsplit(".", 1)
    backbone_class = getattr(import_module(module_name), class_name)
    allowed = [p for p in inspect.signature(backbone_class.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise VfeError(
            f"--model.{name}.{unknown[0]} is not an option of {name}; its options are "
            f"{', '.join([*allowed, BATCH_SIZE_OPTION])}"
        )
    # The parser checks a single backbone's options against their types; here vfe does, for
    # the choices (Literal) a value must be one of.
    hints = get_type_hints(backbone_class.__init__)
    for key, value in options.items():
        choices = get_args(hints.get(key)) if get_origin(hints.get(key)) is Literal else ()
        if choices and value not in choices:
            raise VfeError(
                f"--model.{name}.{key}: expected one of {', '.join(map(str, choices))}, got {value}"
            )
    return backbone_class(**options)


@contextlib.contextmanager
def member_flags(name: str) -> Iterator[None]:
    """A member's errors name its own flags: `--model.weights` -> `--model.NAME.weights`."""
    try:
        yield
    except VfeError as error:
        raise VfeError(str(error).replace("--model.", f"--model.{name}.")) from error


class MultiBackbone(Extractor):
    """Runs several backbones on the same clips, each as it would run alone.

    Args:
        models: backbone names (or class paths), e.g. `[clip, slowfast]`.
        options: per backbone name, its own options (`arch`, `weights`, ...) and `batch_size`
            (samples per forward pass; default the backbone's own).
    """

    def __init__(self, models: list[str], options: dict[str, dict[str, Any]] | None = None):
        super().__init__()
        # Only recorded here: the backbones are built on first use (`members()`, inside
        # `predict`), so a bad name or option reaches the user as one line, not as the
        # argument parser's traceback.
        self.models = list(models)
        self.options = dict(options or {})
        self._batch_sizes: dict[str, int] = {}
        self.backbones: nn.ModuleDict | None = None

    @classmethod
    def of(cls, backbones: list[Backbone]) -> "MultiBackbone":
        """Built from backbone objects rather than names (benchmarks and tests)."""
        multi = cls([backbone.name for backbone in backbones])
        multi.backbones = nn.ModuleDict({backbone.name: backbone for backbone in backbones})
        return multi

    def members(self) -> dict[str, Backbone]:
        if self.backbones is None:
            self.backbones = nn.ModuleDict(self._build_members())
        return dict(self.backbones.items())

    def _build_members(self) -> dict[str, Backbone]:
        if not self.models:
            raise VfeError("--model needs at least one backbone name")
        unknown = sorted(set(self.options) - set(self.models))
        if unknown:
            raise VfeError(
                f"--model.{unknown[0]}.* names a backbone that is not in --model "
                f"{','.join(self.models)}"
            )
        members: dict[str, Backbone] = {}
        for name in self.models:
            member_options = dict(self.options.get(name) or {})
            batch_size = member_options.pop(BATCH_SIZE_OPTION, None)
            member = build_backbone(name, member_options)
            if member.name in members:
                raise VfeError(f"--model names {member.name} twice")
            if batch_size is not None:
                if not isinstance(batch_size, int) or batch_size < 1:
                    raise VfeError(
                        f"--model.{name}.batch_size must be a positive integer, got {batch_size!r}"
                    )
                self._batch_sizes[member.name] = batch_size
            members[member.name] = member
        return members

    @property
    def input_specs(self) -> dict[str, InputSpec]:
        specs = super().input_specs
        return {
            name: dataclasses.replace(spec, default_batch_size=self._batch_sizes[name])
            if name in self._batch_sizes
            else spec
            for name, spec in specs.items()
        }

    def prepare_data(self) -> None:
        for name, member in self.members().items():
            with member_flags(name):
                member.prepare_data()

    def configure_model(self) -> None:
        for name, member in self.members().items():
            with member_flags(name):
                member.configure_model()

    def on_predict_start(self) -> None:
        for member in self.members().values():
            member.on_predict_start()
