"""SlowFast R50 (PyTorchVideo, Kinetics-400 8x8) without its classification layer: 2304-d clips."""

import pickle
import urllib.error
from pathlib import Path
from typing import ClassVar

import torch
from pytorchvideo.models.hub import slowfast as slowfast_hub
from torch import nn
from torchvision.transforms import InterpolationMode

from vfe.backbones.base import Backbone
from vfe.backbones.weights import RANDOM, download_official, resolve_weights_file, weights_record
from vfe.data.clip_grid import uniform_indices
from vfe.data.input_spec import InputSpec
from vfe.errors import VfeError

FAST_FRAMES = 32
SLOW_FAST_ALPHA = 4
OFFICIAL_URL = slowfast_hub.checkpoint_paths["slowfast_r50"]
OFFICIAL_NAME = "PyTorchVideo SLOWFAST_8x8_R50 (Kinetics-400)"
PROJECTION_KEYS = frozenset({"blocks.6.proj.weight", "blocks.6.proj.bias"})


def load_state_dict_into(model: nn.Module, state: object, source: str) -> None:
    """Load a PyTorchVideo checkpoint (`{"model_state": ...}`) or a plain state dict.

    The classification layer may be absent (a headless state dict); nothing else may differ.
    """
    if isinstance(state, dict) and "model_state" in state:
        state = state["model_state"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise VfeError(f"{source} holds no state dict (got {type(state).__name__})")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise VfeError(f"{source} does not fit SlowFast R50: {error}") from error
    missing = set(missing) - PROJECTION_KEYS
    if missing or unexpected:
        raise VfeError(
            f"{source} does not fit SlowFast R50: {len(missing)} missing keys "
            f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {sorted(unexpected)[:3]})"
        )


def official_file() -> Path:
    """Where `torch.hub` keeps PyTorchVideo's Kinetics-400 checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(OFFICIAL_URL).name


def load_slowfast(weights: str | None) -> nn.Module:
    """`slowfast_r50` with official, random or file weights, on the CPU, eval mode, headless."""
    weights_file = resolve_weights_file(weights, "SlowFast R50")
    model = slowfast_hub.slowfast_r50(pretrained=False)
    if weights_file is not None:
        try:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
            raise VfeError(
                f"--model.weights {str(weights_file)!r} could not be read as a PyTorch "
                f"checkpoint: {error}"
            ) from error
        load_state_dict_into(model, state, f"--model.weights {str(weights_file)!r}")
    elif weights != RANDOM:
        hub_file = official_file()
        try:
            # The same download and cache as `slowfast_r50(pretrained=True)`.
            state = torch.hub.load_state_dict_from_url(OFFICIAL_URL, map_location="cpu")
        except (urllib.error.URLError, OSError, RuntimeError) as error:
            raise VfeError(
                f"could not get the official SlowFast R50 weights ({error}). To run offline, "
                f"put {hub_file.name} in {hub_file.parent}/ (the torch hub cache) or pass "
                "--model.weights /path/to/checkpoint"
            ) from error
        load_state_dict_into(model, state, str(hub_file))
    # Only the final projection goes: the head's own pooling stays, giving the pooled,
    # concatenated slow (2048) and fast (256) features.
    model.blocks[-1].proj = None
    return model.eval()


class SlowFastBackbone(Backbone):
    """SlowFast R50 on 32 frames per clip (fast) and 8 of them (slow) -> 2304-d clip features.

    Per clip: 32 frames spread uniformly over the clip; the slow pathway takes 8 of them at
    `linspace(0, 31, 8)` (PyTorchVideo's PackPathway, alpha 4); short side 256 (bilinear),
    center crop 256, `/255`, mean 0.45, std 0.225.

    Args:
        weights: a local checkpoint file (.pyth with `model_state`, or a plain state dict),
            'random', or unset for PyTorchVideo's Kinetics-400 weights.
    """

    name: ClassVar[str] = "slowfast"

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.weights = weights
        self.model: nn.Module | None = None
        self._weights_record: dict[str, str] = {}
        self.register_buffer(
            "slow_indices",
            torch.tensor(uniform_indices(FAST_FRAMES, FAST_FRAMES // SLOW_FAST_ALPHA)),
            persistent=False,
        )
        self._input_spec = InputSpec(
            frames_per_clip=FAST_FRAMES,
            short_side_size=256,
            crop_size=256,
            interpolation=InterpolationMode.BILINEAR,
            antialias=False,
            mean=(0.45, 0.45, 0.45),
            std=(0.225, 0.225, 0.225),
            default_batch_size=8,
            stack_frames=True,
        )

    def prepare_data(self) -> None:
        if self.weights is None:
            download_official(OFFICIAL_URL, official_file(), None, OFFICIAL_NAME)

    def configure_model(self) -> None:
        if self.model is None:
            # channels-last 3D lets oneDNN/cuDNN pick faster convolutions (0.95 -> 0.68 s per
            # clip on a 2-core CPU); the arithmetic is the same.
            self.model = load_slowfast(self.weights).to(memory_format=torch.channels_last_3d)
            self._weights_record = {
                "arch": "slowfast_r50",
                **weights_record(self.weights, OFFICIAL_NAME, official_file(), None),
            }

    @property
    def input_spec(self) -> InputSpec:
        return self._input_spec

    @property
    def feature_dim(self) -> int:
        return 2304

    def weights_record(self) -> dict[str, str]:
        self.configure_model()
        return self._weights_record

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """`(B, 3, 32, 256, 256)` normalised clips -> `(B, 2304)`."""
        fast = samples.contiguous(memory_format=torch.channels_last_3d)
        slow = fast.index_select(2, self.slow_indices).contiguous(
            memory_format=torch.channels_last_3d
        )
        # The model overwrites the list it is given, so build a new one per call.
        return self.model([slow, fast])
