"""What every backbone declares (`InputSpec`) and the shared predict step.

A backbone says which frames it wants from a clip and how they are resized; the datamodule reads
that from `model.input_spec` and never branches on the model. Each clip becomes one or more
samples, the model encodes each sample, and the clip feature is the mean over its samples.
"""

import inspect
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from lightning.pytorch import LightningModule
from torch import nn

from vfe.data.input_spec import AudioSpec, InputSpec, is_audio
from vfe.data.transforms import model_samples, normalize
from vfe.errors import VfeError

if TYPE_CHECKING:
    from vfe.text.tower import TextTower


class Extractor(LightningModule, ABC):
    """What `vfe predict` runs: one backbone, or several fed from one decode (`MultiBackbone`).

    `members()` names the backbones; each batch holds, per member, the samples its InputSpec
    asked for, and `predict_step` returns, per member, `(B, feature_dim) float32` features.
    """

    @abstractmethod
    def members(self) -> dict[str, "Backbone"]: ...

    @property
    def input_specs(self) -> dict[str, InputSpec | AudioSpec]:
        return {name: member.input_spec for name, member in self.members().items()}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        features = {}
        for name, member in self.members().items():
            if name in batch["models"]:
                samples = batch["models"][name]
                if is_audio(member.input_spec):  # `(B, window_samples)` float32 waveforms
                    features[name] = member.features(samples["pixels"])
                    continue
                pixels = model_samples(samples["pixels"], samples.get("layouts"), member.input_spec)
                features[name] = member.features(pixels)
        return features


class Backbone(Extractor):
    """A headless feature extractor; `features` turns a batch of uint8 samples into
    `(B, feature_dim) float32` features (a run of one backbone is its own only member).

    `__init__` only records the options; weights load in `configure_model` (Lightning calls it
    at the start of `predict`), so building the CLI and `--print_config` stay instant and
    loading errors reach the user as one line.
    """

    name: ClassVar[str]
    # Options added after files were made, with their defaults: recorded only when set to
    # something else, so files made before them still match their runs' settings.
    later_options: ClassVar[dict[str, Any]] = {}

    @property
    @abstractmethod
    def input_spec(self) -> InputSpec: ...

    @property
    @abstractmethod
    def feature_dim(self) -> int: ...

    @abstractmethod
    def weights_record(self) -> dict[str, str]:
        """`{"arch", "weights", "weights_sha256"}` of the loaded network (after configure_model)."""

    def provenance(self) -> dict[str, Any]:
        """What this backbone contributes to each file's provenance (`vfe.planning.provenance`)."""
        return {
            "model": f"{type(self).__module__}.{type(self).__qualname__}",
            "options": self.options(),
            **self.weights_record(),
            "feature_dim": self.feature_dim,
            "preprocessing": self.input_spec.recipe(),
        }

    def options(self) -> dict[str, Any]:
        """The constructor arguments this backbone was built with (recorded in provenance, so
        `vfe text` can rebuild it)."""
        names = inspect.signature(type(self).__init__).parameters
        # vfe's backbones keep each argument under its own name; others record what they keep.
        options = {
            name: getattr(self, name)
            for name in names
            if hasattr(self, name)
            and not (name in self.later_options and getattr(self, name) == self.later_options[name])
        }
        # A weights file given relative to the run's folder is found from anywhere later.
        return {
            name: str(Path(value).expanduser().resolve())
            if isinstance(value, str) and Path(value).expanduser().is_file()
            else value
            for name, value in options.items()
        }

    def text_tower(self) -> "TextTower":
        """The text side of an image-text backbone (`vfe text`), on the CPU in eval mode."""
        raise VfeError(
            f"{self.name} has no text encoder; vfe text needs features of an image-text "
            "backbone (clip, open_clip)"
        )

    @abstractmethod
    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """Normalised float samples `(B, C, H, W)` or `(B, C, T, H, W)` -> `(B, feature_dim)`."""

    def members(self) -> dict[str, "Backbone"]:
        return {self.name: self}

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 samples `(B, C, H, W)` or `(B, C, T, H, W)` -> `(B, feature_dim)` float32."""
        spec = self.input_spec
        # In the module's own dtype: under `bf16-true` / `16-true` the weights are half precision.
        samples = normalize(pixels, spec.mean, spec.std, channel_dim=1).to(self.dtype)
        return self.encode(samples).float()


class LoadedBackbone(Backbone):
    """A backbone whose recipe travels with its weights (open_clip tags, timm's pretrained_cfg,
    a Hugging Face image processor): `load` returns the network with its InputSpec and weights
    record, once, on first use."""

    def __init__(self, arch: str, weights: str | None) -> None:
        super().__init__()
        self.arch = arch
        self.weights = weights
        self.model: nn.Module | None = None
        self._input_spec: InputSpec | None = None
        self._weights_record: dict[str, str] = {}

    @abstractmethod
    def load(self) -> tuple[nn.Module, InputSpec, dict[str, str]]:
        """The network in eval mode on the CPU, its InputSpec and `weights_record()`."""

    def configure_model(self) -> None:
        if self.model is None:
            self.model, self._input_spec, self._weights_record = self.load()

    @property
    def input_spec(self) -> InputSpec:
        self.configure_model()
        return self._input_spec

    def weights_record(self) -> dict[str, str]:
        self.configure_model()
        return self._weights_record
