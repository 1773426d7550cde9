"""PyTorchVideo's Kinetics-400 zoo beyond SlowFast: X3D, Slow, I3D, R(2+1)D, CSN and MViT,
headless (the head's projection and softmax removed, its pooling kept).

Each model takes its model-zoo recipe: N frames per clip (spread uniformly over the clip, as
for SlowFast), short side scaled (bilinear, as `ShortSideScale`), a center crop, `/255`, mean
0.45, std 0.225.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from vfe.backbones.base import Backbone
from vfe.backbones.pytorchvideo_hub import (
    load_hub_model,
    official_file,
    official_url,
    remove_classifier,
)
from vfe.backbones.weights import download_official, weights_record
from vfe.data.input_spec import InputSpec
from vfe.errors import VfeError

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


@dataclass(frozen=True)
class ZooRecipe:
    """A model-zoo entry: `frames x sample rate` in the zoo's name, test-time side and crop."""

    checkpoint: str  # the official file's name, for messages
    frames_per_clip: int
    side_size: int
    crop_size: int
    feature_dim: int
    default_batch_size: int


# From PyTorchVideo's model zoo (Kinetics-400) and its torch hub examples.
ZOO: dict[str, ZooRecipe] = {
    "x3d_xs": ZooRecipe("X3D_XS 4x12", 4, 182, 182, 2048, 32),
    "x3d_s": ZooRecipe("X3D_S 13x6", 13, 182, 182, 2048, 16),
    "x3d_m": ZooRecipe("X3D_M 16x5", 16, 256, 256, 2048, 16),
    "x3d_l": ZooRecipe("X3D_L 16x5", 16, 312, 312, 2048, 8),
    "slow_r50": ZooRecipe("SLOW_8x8_R50", 8, 256, 256, 2048, 8),
    "i3d_r50": ZooRecipe("I3D_8x8_R50", 8, 256, 256, 2048, 8),
    "r2plus1d_r50": ZooRecipe("R2PLUS1D_16x4_R50", 16, 256, 256, 2048, 8),
    "csn_r101": ZooRecipe("CSN_32x2_R101", 32, 256, 256, 2048, 8),
    "mvit_base_16x4": ZooRecipe("MVIT_B_16x4", 16, 224, 224, 768, 8),
}


class PyTorchVideoBackbone(Backbone):
    """A PyTorchVideo Kinetics-400 model on N frames per clip -> one feature per clip.

    Args:
        arch: x3d_xs, x3d_s, x3d_m, x3d_l, slow_r50, i3d_r50, r2plus1d_r50, csn_r101 or
            mvit_base_16x4 (frames, size and feature dim in docs/usage.md's backbone table).
        weights: a local checkpoint file (.pyth with `model_state`, or a plain state dict),
            'random', or unset for PyTorchVideo's Kinetics-400 weights (torch hub cache).
    """

    name: ClassVar[str] = "pytorchvideo"

    def __init__(self, arch: str = "x3d_m", weights: str | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.weights = weights
        self.model: nn.Module | None = None
        self._weights_record: dict[str, str] = {}

    @property
    def recipe(self) -> ZooRecipe:
        # Checked on use, not in __init__, so a bad name reaches the user as one line.
        if self.arch not in ZOO:
            raise VfeError(
                f"--model.arch {self.arch!r} is not a PyTorchVideo zoo model vfe knows; choose "
                f"one of {', '.join(ZOO)} (SlowFast is --model slowfast)"
            )
        return ZOO[self.arch]

    @property
    def label(self) -> str:
        return f"PyTorchVideo {self.recipe.checkpoint} (Kinetics-400)"

    def prepare_data(self) -> None:
        if self.weights is None:
            download_official(official_url(self.arch), official_file(self.arch), None, self.label)

    def configure_model(self) -> None:
        if self.model is None:
            network = load_hub_model(self.arch, self.weights, self.label)
            self.model = remove_classifier(network).to(memory_format=torch.channels_last_3d)
            self._weights_record = {
                "arch": self.arch,
                **weights_record(self.weights, self.label, official_file(self.arch), None),
            }

    @property
    def input_spec(self) -> InputSpec:
        recipe = self.recipe
        return InputSpec(
            frames_per_clip=recipe.frames_per_clip,
            resize_size=recipe.side_size,
            crop_size=recipe.crop_size,
            interpolation=InterpolationMode.BILINEAR,
            antialias=False,  # ShortSideScale is F.interpolate without antialiasing
            mean=KINETICS_MEAN,
            std=KINETICS_STD,
            default_batch_size=recipe.default_batch_size,
            stack_frames=True,
        )

    @property
    def feature_dim(self) -> int:
        return self.recipe.feature_dim

    def weights_record(self) -> dict[str, str]:
        self.configure_model()
        return self._weights_record

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """`(B, 3, T, h, w)` normalised clips -> `(B, feature_dim)`."""
        return self.model(samples.contiguous(memory_format=torch.channels_last_3d))
