"""timm image models (DINOv2, EVA-02, ConvNeXt, ...) headless on every frame.

Without its classifier (`reset_classifier(0)`) a timm model gives its pooled pre-logits
features; the preprocessing is the model's own `pretrained_cfg` as
`timm.data.resolve_data_config` resolves it (input size, crop_pct and crop mode, interpolation,
mean/std), i.e. what `timm.data.create_transform` does at eval.
"""

import math
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from vfe.backbones.base import LoadedBackbone
from vfe.backbones.extras import FramesPerClip, frames_of_clip
from vfe.backbones.weights import RANDOM, resolve_weights_file, weights_record
from vfe.data.input_spec import InputSpec, ResizeMode
from vfe.errors import VfeError
from vfe.optional import import_extra

INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
CROP_MODES = {"center": ResizeMode.SHORTEST, "squash": ResizeMode.SQUASH}
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _timm() -> ModuleType:
    return import_extra("timm", "timm", "timm")


def input_spec_of(config: dict[str, Any], frames_per_clip: FramesPerClip) -> InputSpec:
    """timm's eval data config -> InputSpec, as `transforms_imagenet_eval` resizes and crops:
    each side scaled to `floor(side / crop_pct)` (shortest side kept in ratio for 'center'),
    then the central `input_size`."""
    crop_mode = config.get("crop_mode") or "center"
    interpolation = config["interpolation"]
    if crop_mode not in CROP_MODES or interpolation not in INTERPOLATIONS:
        raise VfeError(
            f"timm data config {config} is not supported: vfe knows crop modes "
            f"{', '.join(CROP_MODES)} and interpolations {', '.join(INTERPOLATIONS)}"
        )
    height, width = config["input_size"][1:]
    crop_pct = config.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
    scaled = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    num_frames, sampling = frames_of_clip(frames_per_clip)
    return InputSpec(
        frames_per_clip=num_frames,
        frame_sampling=sampling,
        resize_size=scaled[0] if scaled[0] == scaled[1] else scaled,
        crop_size=height if height == width else (height, width),
        interpolation=INTERPOLATIONS[interpolation],
        antialias=True,  # timm resizes PIL images, which antialiases
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        default_batch_size=32,
        resize_mode=CROP_MODES[crop_mode],
    )


def cached_pretrained_file(pretrained_cfg: dict[str, Any]) -> Path | None:
    """The file timm loaded a pretrained tag from (Hugging Face or torch hub cache)."""
    hub_id = pretrained_cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = (pretrained_cfg.get("hf_hub_filename"), *HF_WEIGHT_FILES)
        for name in filter(None, names):
            found = try_to_load_from_cache(hub_id, name)
            if isinstance(found, str):
                return Path(found)
    url = pretrained_cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        return path if path.is_file() else None
    return None


class TimmBackbone(LoadedBackbone):
    """A timm image model without its classifier on every frame; a clip's feature is the mean
    over its frames of the pooled features.

    Args:
        arch: a timm model name, with its pretrained tag (`vit_base_patch14_dinov2.lvd142m`,
            `eva02_base_patch14_224.mim_in22k`, `convnext_base.fb_in22k_ft_in1k`).
        weights: a local weights file, 'random', or unset for the tag's pretrained weights
            (timm's Hugging Face cache; downloaded if absent).
        img_size: the input size `[height, width]` (or one int) for models that take one (ViTs,
            e.g. DINOv2 at 224 instead of 518); timm resamples the position embeddings.
        frames_per_clip: encode N frames spread uniformly over each clip instead of every frame,
            or 'middle': the one frame on screen at the clip's middle (FFmpeg's fps filter).
    """

    name: ClassVar[str] = "timm"

    def __init__(
        self,
        arch: str = "vit_base_patch14_dinov2.lvd142m",
        weights: str | None = None,
        img_size: int | list[int] | None = None,
        frames_per_clip: FramesPerClip = None,
    ) -> None:
        super().__init__(arch, weights)
        self.img_size = img_size
        self.frames_per_clip = frames_per_clip

    def _image_size(self) -> tuple[int, int] | None:
        size = self.img_size
        if size is None:
            return None
        if isinstance(size, int) and size > 0:
            return (size, size)
        if (
            isinstance(size, list | tuple)
            and len(size) == 2
            and all(isinstance(v, int) and v > 0 for v in size)
        ):
            return (size[0], size[1])
        raise VfeError(f"--model.img_size must be a positive int or [height, width], got {size!r}")

    def load(self) -> tuple[nn.Module, InputSpec, dict[str, str]]:
        frames_of_clip(self.frames_per_clip)  # checked before the weights load
        timm = _timm()
        image_size = self._image_size()
        if not timm.is_model(self.arch):
            raise VfeError(
                f"--model.arch {self.arch!r} is not a timm model; see timm.list_models() "
                "(e.g. vit_base_patch14_dinov2.lvd142m, convnext_base.fb_in22k_ft_in1k)"
            )
        weights_file = resolve_weights_file(self.weights, f"timm {self.arch}")
        # The classifier is removed after loading: asked for at creation (`num_classes=0`),
        # timm loads the weights non-strictly and a file of another model would go unnoticed.
        options: dict[str, Any] = {}
        if image_size is not None:
            options["img_size"] = image_size
        if weights_file is not None:
            # timm's own way to load a local file: its filters (position-embedding resampling,
            # classifier removal) apply as to the tag's download.
            options["pretrained_cfg_overlay"] = {"file": str(weights_file)}
        try:
            model = timm.create_model(self.arch, pretrained=self.weights != RANDOM, **options)
        except TypeError as error:  # a model without img_size
            raise VfeError(
                f"--model.arch {self.arch} does not take --model.img_size: {error}"
            ) from error
        except (RuntimeError, KeyError, ValueError, OSError) as error:
            source = f"--model.weights {self.weights!r}" if weights_file else "the tag's weights"
            raise VfeError(
                f"could not load {source} into timm {self.arch} ({error}). To run offline, "
                "fill the Hugging Face cache on a machine with a network "
                f"(timm.create_model({self.arch!r}, pretrained=True)) or pass --model.weights FILE"
            ) from error
        model.reset_classifier(0)
        args = {} if image_size is None else {"input_size": (3, *image_size)}
        config = timm.data.resolve_data_config(args, model=model)
        record = {"arch": self.arch, **self._weights_source(model, weights_file)}
        return model.eval(), input_spec_of(config, self.frames_per_clip), record

    def _weights_source(self, model: nn.Module, weights_file: Path | None) -> dict[str, str]:
        official = None
        if self.weights is None:
            official = cached_pretrained_file(model.pretrained_cfg)
            if official is None:
                raise VfeError(f"timm loaded {self.arch}'s weights from no file vfe can hash")
        return weights_record(self.weights, f"timm {self.arch}", official or Path(), None)

    @property
    def feature_dim(self) -> int:
        self.configure_model()
        return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """`(B, 3, h, w)` normalised frames -> `(B, D)` pooled features."""
        return self.model(samples)
