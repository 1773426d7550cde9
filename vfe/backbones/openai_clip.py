"""CLIP image encoder (OpenAI weights through the `clip` package) as a per-frame backbone."""

import pickle
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from vfe.backbones.base import Backbone
from vfe.backbones.extras import FramesPerClip, frames_of_clip
from vfe.backbones.hero import Recipe, check_frames_per_clip, hero_clip_spec
from vfe.backbones.weights import (
    RANDOM,
    check_official_file,
    download_official,
    resolve_weights_file,
    weights_record,
)
from vfe.data.input_spec import InputSpec
from vfe.errors import VfeError
from vfe.text.tower import TextTower

# `clip` imports pkg_resources, which warns on every run; the pin setuptools<81 keeps it working.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
with warnings.catch_warnings():  # clip's module-level torch.jit.script: upstream's to change
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    import clip
    from clip.model import CLIP

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CUSTOM_ARCH = "custom"

# Constructor arguments of `clip.model.CLIP` for each OpenAI release, used to build random
# networks and to check that a weights file holds the architecture asked for:
# (embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
#  context_length, vocab_size, transformer_width, transformer_heads, transformer_layers)
CLIP_ARCHS: dict[str, tuple[Any, ...]] = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 77, 49408, 512, 8, 12),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None, 77, 49408, 640, 10, 12),
    "RN50x16": (768, 384, (6, 8, 18, 8), 96, None, 77, 49408, 768, 12, 12),
    "RN50x64": (1024, 448, (3, 15, 36, 10), 128, None, 77, 49408, 1024, 16, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 77, 49408, 768, 12, 12),
}


def visual_signature(visual: nn.Module) -> tuple[Any, ...]:
    """(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size) of a tower."""
    if hasattr(visual, "transformer"):  # VisionTransformer
        return (
            visual.output_dim,
            visual.input_resolution,
            visual.transformer.layers,
            visual.transformer.width,
            visual.conv1.kernel_size[0],
        )
    blocks = (visual.layer1, visual.layer2, visual.layer3, visual.layer4)
    return (
        visual.output_dim,
        visual.input_resolution,
        tuple(len(block) for block in blocks),
        visual.conv1.out_channels * 2,
        None,
    )


def describe_signature(signature: tuple[Any, ...]) -> str:
    embed_dim, resolution, layers, width, patch = signature
    kind = f"ViT patch {patch}" if patch else "ResNet"
    return f"{kind}, {resolution}px, layers {layers}, width {width}, embedding {embed_dim}"


def load_clip(arch: str, weights: str | None) -> CLIP:
    """A float32 CLIP on the CPU in eval mode: official, random, or from a local file."""
    if arch not in CLIP_ARCHS and arch != CUSTOM_ARCH:
        raise VfeError(
            f"--model.arch {arch!r} is not a CLIP architecture; choose one of "
            f"{', '.join(CLIP_ARCHS)} (or '{CUSTOM_ARCH}' with a --model.weights file)"
        )
    weights_file = resolve_weights_file(weights, f"CLIP {arch}")
    if arch == CUSTOM_ARCH and weights_file is None:
        raise VfeError(
            f"--model.arch {CUSTOM_ARCH} takes the architecture from a --model.weights file; "
            "give one"
        )
    if weights == RANDOM:
        return CLIP(*CLIP_ARCHS[arch]).float().eval()
    if weights_file is None:
        return _load_official(arch)
    try:
        model, _ = clip.load(str(weights_file), device="cpu", jit=False)
    except (
        RuntimeError,
        KeyError,
        ValueError,
        AssertionError,
        EOFError,
        pickle.UnpicklingError,
    ) as error:
        raise VfeError(
            f"--model.weights {str(weights_file)!r} is not a CLIP checkpoint that clip.load "
            f"accepts (an OpenAI JIT archive or a CLIP state dict): {error}"
        ) from error
    if arch != CUSTOM_ARCH:
        found = visual_signature(model.visual)
        expected = CLIP_ARCHS[arch][:5]
        if found != expected:
            raise VfeError(
                f"--model.weights {str(weights_file)!r} holds a CLIP image encoder with "
                f"{describe_signature(found)}, not {arch} ({describe_signature(expected)}); "
                f"pass the matching --model.arch, or '{CUSTOM_ARCH}' to take it from the file"
            )
    return model.float().eval()


CLIP_CACHE = Path("~/.cache/clip")


def official_file(arch: str) -> Path:
    """Where `clip.load(arch)` keeps OpenAI's file."""
    return CLIP_CACHE.expanduser() / Path(clip.clip._MODELS[arch]).name


def _load_official(arch: str) -> CLIP:
    cache = CLIP_CACHE.expanduser()
    url = clip.clip._MODELS[arch]
    if official_file(arch).is_file():  # clip's URLs carry the file's sha256
        check_official_file(official_file(arch), url.split("/")[-2], url, f"OpenAI CLIP {arch}")
    try:
        model, _ = clip.load(arch, device="cpu", jit=False)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        file_name = Path(clip.clip._MODELS[arch]).name
        raise VfeError(
            f"could not get the official CLIP {arch} weights ({error}). To run offline, put "
            f"{file_name} in {cache}/ (the clip package's cache) or pass --model.weights "
            "/path/to/checkpoint"
        ) from error
    return model.float().eval()


class CLIPBackbone(Backbone):
    """CLIP's image encoder on every frame; a clip's feature is the mean over its frames.

    Preprocessing is CLIP's own: short side to the input resolution (bicubic, antialiased),
    center crop, CLIP mean/std.

    Args:
        arch: OpenAI CLIP name (ViT-B/32, RN50, ViT-B/16, ViT-L/14, ...), or 'custom' to take
            the architecture from the weights file.
        weights: a local checkpoint file, 'random', or unset for the official weights.
        frames_per_clip: encode N frames spread uniformly over each clip (PyTorchVideo's
            rule) instead of every frame, the clip feature being their mean; or 'middle': the
            one frame on screen at the clip's middle, the one FFmpeg's `fps=1/clip_len`
            picks.
        recipe: 'vfe' (the contract's, above) or 'hero': HERO_Video_Feature_Extractor's, which
            made the released QVHighlights CLIP features (`vfe.backbones.hero`): one frame per
            clip from FFmpeg's fps=1/clip_len, scale and crop (bicubic, FFmpeg's), a row per
            frame the filter gives.
    """

    name: ClassVar[str] = "clip"
    later_options: ClassVar[dict[str, Any]] = {"recipe": "vfe"}

    def __init__(
        self,
        arch: str = "ViT-B/32",
        weights: str | None = None,
        frames_per_clip: FramesPerClip = None,
        recipe: Recipe = "vfe",
    ) -> None:
        super().__init__()
        self.recipe = recipe
        self.arch = arch
        self.weights = weights
        self.frames_per_clip = frames_per_clip
        self.visual: nn.Module | None = None
        self._input_spec: InputSpec | None = None
        self._weights_record: dict[str, str] = {}

    def prepare_data(self) -> None:
        if self.weights is None and self.arch in CLIP_ARCHS:
            url = clip.clip._MODELS[self.arch]
            sha256 = url.split("/")[-2]  # clip's URLs carry the file's checksum
            download_official(url, official_file(self.arch), sha256, f"OpenAI CLIP {self.arch}")

    def configure_model(self) -> None:
        if self.visual is not None:
            return
        frames_of_clip(self.frames_per_clip)  # checked before the weights load
        check_frames_per_clip(self.recipe, self.frames_per_clip)
        # The text tower is never used; keeping only the image encoder halves the memory.
        self.visual = load_clip(self.arch, self.weights).visual
        # clip.load verifies the official file against the sha256 in its URL.
        official_sha256 = None
        if self.weights is None:
            official_sha256 = clip.clip._MODELS[self.arch].split("/")[-2]
        self._weights_record = {
            "arch": self.arch,
            **weights_record(
                self.weights,
                f"OpenAI CLIP {self.arch}",
                official_file(self.arch) if self.weights is None else Path(),
                official_sha256,
            ),
        }
        resolution = int(self.visual.input_resolution)
        num_frames, sampling = frames_of_clip(self.frames_per_clip)
        self._input_spec = InputSpec(
            frames_per_clip=num_frames,
            frame_sampling=sampling,
            resize_size=resolution,
            crop_size=resolution,
            interpolation=InterpolationMode.BICUBIC,
            antialias=True,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            default_batch_size=32,
        )
        if self.recipe == "hero":
            self._input_spec = hero_clip_spec(resolution, CLIP_MEAN, CLIP_STD)

    @property
    def input_spec(self) -> InputSpec:
        self.configure_model()
        return self._input_spec

    @property
    def feature_dim(self) -> int:
        self.configure_model()
        return int(self.visual.output_dim)

    def weights_record(self) -> dict[str, str]:
        self.configure_model()
        return self._weights_record

    def on_predict_start(self) -> None:
        # Under `bf16-true` / `16-true` Lightning casts every parameter; CLIP's LayerNorm computes
        # in float32 and needs float32 weights (as `clip.model.convert_weights` keeps them).
        for module in self.visual.modules():
            if isinstance(module, nn.LayerNorm):
                module.float()

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """`(B, 3, R, R)` normalised frames -> `(B, D)` image embeddings (not L2-normalised)."""
        return self.visual(samples)

    def text_tower(self) -> TextTower:
        """CLIP's text transformer from the same weights (the image run keeps only `visual`)."""
        self.configure_model()  # the same checks and weights record as the features' run
        model = load_clip(self.arch, self.weights)
        tokenize = lambda queries: clip.tokenize(queries, truncate=True)  # noqa: E731
        return TextTower(model, model.ln_final, tokenize, pad_token_id=0)
