"""Loading PyTorchVideo hub models (official Kinetics weights, random, or a local file) headless.

Shared by SlowFast and the single-pathway zoo models: the builders of
`pytorchvideo.models.hub`, the torch hub cache for the official checkpoints, and a strict load
in which only the classification layer may be absent.
"""

import pickle
import sys
import urllib.error
from collections.abc import Callable
from pathlib import Path

import torch
from pytorchvideo.models import hub
from torch import nn

from vfe.backbones.weights import RANDOM, resolve_weights_file
from vfe.errors import VfeError


def official_url(builder: str) -> str:
    """The checkpoint URL `hub.<builder>(pretrained=True)` downloads."""
    module = sys.modules[getattr(hub, builder).__module__]
    return module.checkpoint_paths[builder]


def official_file(builder: str) -> Path:
    """Where `torch.hub` keeps the official checkpoint of `builder`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(official_url(builder)).name


def head_of(model: nn.Module) -> nn.Module:
    """The classification head: `model.head` (MViT) or the last block (ResNet-style nets)."""
    return model.head if hasattr(model, "head") else model.blocks[-1]


def load_state_dict_into(model: nn.Module, state: object, source: str, label: str) -> None:
    """Load a PyTorchVideo checkpoint (`{"model_state": ...}`) or a plain state dict.

    The classification layer may be absent (a headless state dict); nothing else may differ.
    """
    if isinstance(state, dict) and "model_state" in state:
        state = state["model_state"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise VfeError(f"{source} holds no state dict (got {type(state).__name__})")
    head_prefix = next(n for n, m in model.named_modules() if m is head_of(model))
    projection = {f"{head_prefix}.proj.weight", f"{head_prefix}.proj.bias"}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise VfeError(f"{source} does not fit {label}: {error}") from error
    missing = set(missing) - projection
    if missing or unexpected:
        raise VfeError(
            f"{source} does not fit {label}: {len(missing)} missing keys "
            f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {sorted(unexpected)[:3]})"
        )


# A builder's own reader of other checkpoint formats: (file, torch.load's result or None for a
# `.pkl` file it reads itself, the model) -> a state dict for the model.
OtherFormats = Callable[[Path, object, nn.Module], object]


def load_hub_model(
    builder: str, weights: str | None, label: str, other_formats: OtherFormats | None = None
) -> nn.Module:
    """`hub.<builder>` with official, random or file weights, on the CPU, in eval mode, with its
    classification layer still in place. `other_formats` reads the builder's other checkpoint
    formats (SlowFast: PySlowFast's Caffe2 `.pkl` and PySlowFast-named checkpoints)."""
    weights_file = resolve_weights_file(weights, label)
    model = getattr(hub, builder)(pretrained=False)
    if weights_file is not None and other_formats is not None and weights_file.suffix == ".pkl":
        state = other_formats(weights_file, None, model)
        load_state_dict_into(model, state, f"--model.weights {str(weights_file)!r}", label)
    elif weights_file is not None:
        try:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
            raise VfeError(
                f"--model.weights {str(weights_file)!r} could not be read as a PyTorch "
                f"checkpoint: {error}"
            ) from error
        if other_formats is not None:
            state = other_formats(weights_file, state, model)
        load_state_dict_into(model, state, f"--model.weights {str(weights_file)!r}", label)
    elif weights != RANDOM:
        hub_file = official_file(builder)
        try:
            # The same download and cache as `hub.<builder>(pretrained=True)`.
            state = torch.hub.load_state_dict_from_url(official_url(builder), map_location="cpu")
        except (urllib.error.URLError, OSError, RuntimeError) as error:
            raise VfeError(
                f"could not get the official {label} weights ({error}). To run offline, "
                f"put {hub_file.name} in {hub_file.parent}/ (the torch hub cache) or pass "
                "--model.weights /path/to/checkpoint"
            ) from error
        load_state_dict_into(model, state, str(hub_file), label)
    return model.eval()


def remove_classifier(model: nn.Module) -> nn.Module:
    """Only the final projection (and its softmax) go: the head's own pooling stays, so the
    output is the pooled features the classifier saw."""
    head = head_of(model)
    head.proj = nn.Identity()
    head.activation = None
    return model
