"""open_clip image encoders (SigLIP, EVA, DFN, LAION/DataComp CLIP, ...) as per-frame backbones.

The preprocessing is the recipe open_clip resolves for the weights (image size, mean/std,
interpolation, shortest-side crop or SigLIP's squash of the whole frame), never a default the
weights were not trained with: a bare weights file takes its recipe from `--model.recipe TAG`, or
from the architecture's pretrained tags when they all agree on one.
"""

import json
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from vfe.backbones.base import LoadedBackbone
from vfe.backbones.extras import FramesPerClip, frames_of_clip
from vfe.backbones.weights import RANDOM, resolve_weights_file
from vfe.data.input_spec import InputSpec, ResizeMode
from vfe.errors import VfeError
from vfe.optional import import_extra
from vfe.planning.provenance import sha256_of_file
from vfe.text.tower import TextTower

HF_HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"
RESIZE_MODES = {"shortest": ResizeMode.SHORTEST, "squash": ResizeMode.SQUASH}
INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def _open_clip() -> ModuleType:
    return import_extra("open_clip", "open_clip", "open_clip")


def tag_recipes(arch: str) -> dict[str, dict[str, Any]]:
    """Per pretrained tag of a built-in architecture, the preprocessing open_clip uses with it."""
    open_clip = _open_clip()
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    defaults = asdict(PreprocessCfg())
    return {
        tag: merge_preprocess_dict(defaults, open_clip.get_pretrained_cfg(arch, tag))
        for tag in open_clip.list_pretrained_tags_by_model(arch)
    }


def recipe_for_file(arch: str, recipe_tag: str | None, weights: str) -> dict[str, Any] | None:
    """The recipe a weights file is used with: `recipe_tag`'s, or the one all of the
    architecture's tags share; None (open_clip's defaults) only for random weights."""
    recipes = tag_recipes(arch)
    if recipe_tag is not None:
        if recipe_tag not in recipes:
            raise VfeError(
                f"--model.recipe {recipe_tag!r} is not a pretrained tag of {arch}; its tags are "
                f"{', '.join(recipes) or 'none'}"
            )
        return recipes[recipe_tag]
    distinct = {json.dumps(recipe, sort_keys=True) for recipe in recipes.values()}
    if len(distinct) == 1:
        return next(iter(recipes.values()))
    if weights == RANDOM:
        return None
    raise VfeError(
        f"--model.weights {weights!r}: a bare weights file carries no preprocessing, and {arch}'s "
        f"pretrained tags use {len(distinct) or 'no'} different recipes; name the tag the "
        f"weights were trained with by --model.recipe (one of {', '.join(recipes) or 'none'}), "
        f"or use --model.arch {LOCAL_DIR}/path with an open_clip_config.json"
    )


def check_quick_gelu(arch: str, tag: str) -> None:
    """open_clip only warns when a tag's activation differs from the architecture's; the
    features are then wrong (OpenAI weights on plain ViT-B-32: ~0.03 off)."""
    open_clip = _open_clip()
    tag_quick = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
    arch_quick = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    if tag_quick != arch_quick:
        fix = f"{arch}-quickgelu" if tag_quick else arch.removesuffix("-quickgelu")
        raise VfeError(
            f"the {tag!r} weights of {arch} were trained with "
            f"{'QuickGELU' if tag_quick else 'GELU'}, which --model.arch {arch} does not use; "
            f"pass --model.arch {fix}"
        )


def input_spec_of(recipe: dict[str, Any], frames_per_clip: FramesPerClip) -> InputSpec:
    """open_clip's preprocess config -> InputSpec (PIL's resize is antialiased)."""
    mode = recipe["resize_mode"]
    if mode not in RESIZE_MODES or recipe["interpolation"] not in INTERPOLATIONS:
        raise VfeError(
            f"open_clip recipe {recipe} is not supported: vfe knows resize modes "
            f"{', '.join(RESIZE_MODES)} and interpolations {', '.join(INTERPOLATIONS)}"
        )
    size = recipe["size"]
    if not isinstance(size, int):  # open_clip gives the tower's (s, s) for a square input
        size = int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1]))
    num_frames, sampling = frames_of_clip(frames_per_clip)
    return InputSpec(
        frames_per_clip=num_frames,
        frame_sampling=sampling,
        resize_size=size,
        crop_size=size if RESIZE_MODES[mode] is ResizeMode.SHORTEST else None,
        interpolation=INTERPOLATIONS[recipe["interpolation"]],
        antialias=True,
        mean=tuple(float(v) for v in recipe["mean"]),
        std=tuple(float(v) for v in recipe["std"]),
        default_batch_size=32,
        resize_mode=RESIZE_MODES[mode],
    )


class OpenCLIPBackbone(LoadedBackbone):
    """An open_clip model's image encoder on every frame; a clip's feature is the mean over its
    frames of `encode_image` (not L2-normalised).

    Args:
        arch: an open_clip model name (`ViT-B-16-SigLIP`, `ViT-L-14`, `EVA02-B-16`,
            `ViT-H-14-quickgelu`, ...), `hf-hub:org/repo`, or `local-dir:/path` (a folder with
            open_clip_config.json and the weights: the offline form that keeps the recipe).
        weights: a pretrained tag of the name (`webli`, `datacomp_xl_s13b_b90k`, `dfn5b`; from
            open_clip's cache, downloaded if absent), a local weights file, 'random', or unset:
            the name's only tag, or the hf-hub repo's / local folder's weights.
        recipe: with a weights file, the pretrained tag whose preprocessing the weights were
            trained with (needed when the name's tags disagree).
        frames_per_clip: encode N frames spread uniformly over each clip instead of every frame,
            or 'middle': the one frame on screen at the clip's middle (FFmpeg's fps filter).
    """

    name: ClassVar[str] = "open_clip"

    def __init__(
        self,
        arch: str = "ViT-B-16-SigLIP",
        weights: str | None = None,
        recipe: str | None = None,
        frames_per_clip: FramesPerClip = None,
    ) -> None:
        super().__init__(arch, weights)
        self.recipe = recipe
        self.frames_per_clip = frames_per_clip
        self._feature_dim: int | None = None  # set by load()

    def load(self) -> tuple[nn.Module, InputSpec, dict[str, str]]:
        frames_of_clip(self.frames_per_clip)  # checked before the weights load
        open_clip = _open_clip()
        if self.arch.startswith((HF_HUB, LOCAL_DIR)):
            model, weights_path = self._load_packaged(open_clip)
        else:
            model, weights_path = self._load_named(open_clip)
        random = self.weights == RANDOM
        record = {
            "arch": self.arch,
            "weights": RANDOM if random else str(weights_path),
            "weights_sha256": RANDOM if random else sha256_of_file(weights_path),
        }
        spec = input_spec_of(model.visual.preprocess_cfg, self.frames_per_clip)
        model = model.float().eval()
        self._feature_dim = getattr(model.visual, "output_dim", None)
        if self._feature_dim is None:  # timm towers (SigLIP, EVA) keep no output_dim: measure
            with torch.no_grad():
                probe = torch.zeros(1, 3, *spec.sample_size)
                self._feature_dim = model.encode_image(probe).shape[-1]
        return model, spec, record

    def _load_packaged(self, open_clip: ModuleType) -> tuple[nn.Module, Path | None]:
        """`hf-hub:` / `local-dir:`: open_clip reads model and recipe from the config there."""
        if self.weights not in (None, RANDOM) or self.recipe is not None:
            raise VfeError(
                f"--model.arch {self.arch} brings its own weights and recipe; leave "
                "--model.weights and --model.recipe unset (or --model.weights random)"
            )
        if self.arch.startswith(LOCAL_DIR):
            folder = Path(self.arch.removeprefix(LOCAL_DIR)).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise VfeError(
                    f"--model.arch {self.arch}: {folder} has no open_clip_config.json; a "
                    "local-dir model is a folder with that file and the weights "
                    "(open_clip_model.safetensors or open_clip_pytorch_model.bin)"
                )
        load_weights = self.weights != RANDOM
        try:
            model = open_clip.create_model(self.arch, device="cpu", load_weights=load_weights)
        except (OSError, RuntimeError, ValueError) as error:
            raise VfeError(f"--model.arch {self.arch} could not be loaded: {error}") from error
        if not load_weights:
            return model, None
        from open_clip.factory import _find_checkpoint_in_dir
        from open_clip.pretrained import download_pretrained_from_hf

        if self.arch.startswith(LOCAL_DIR):
            found = _find_checkpoint_in_dir(Path(self.arch.removeprefix(LOCAL_DIR)).expanduser())
        else:
            found = download_pretrained_from_hf(self.arch.removeprefix(HF_HUB))  # cached
        if not found:
            raise VfeError(f"--model.arch {self.arch} has no weights file")
        return model, Path(found)

    def _load_named(self, open_clip: ModuleType) -> tuple[nn.Module, Path | None]:
        if open_clip.get_model_config(self.arch) is None:
            raise VfeError(
                f"--model.arch {self.arch!r} is not an open_clip model; see "
                "open_clip.list_models() (e.g. ViT-B-16-SigLIP, ViT-L-14, EVA02-B-16), or use "
                f"{HF_HUB}org/repo or {LOCAL_DIR}/path"
            )
        tags = open_clip.list_pretrained_tags_by_model(self.arch)
        weights = self.weights
        if weights is None:
            if len(tags) != 1:
                raise VfeError(
                    f"--model.arch {self.arch} has {len(tags)} pretrained tags; choose one with "
                    f"--model.weights ({', '.join(tags) or 'none'}), or pass a weights file"
                )
            weights = tags[0]
        if weights in tags:
            if self.recipe not in (None, weights):
                raise VfeError(
                    f"--model.recipe {self.recipe!r} contradicts --model.weights {weights!r}: "
                    "the tag's own recipe is used; drop --model.recipe"
                )
            check_quick_gelu(self.arch, weights)
            try:
                model = open_clip.create_model(self.arch, pretrained=weights, device="cpu")
            except RuntimeError as error:  # open_clip wraps download errors in RuntimeError
                raise VfeError(
                    f"could not get the {weights!r} weights of {self.arch} ({error}). To run "
                    "offline, fill the Hugging Face cache on a machine with a network "
                    f"(open_clip.create_model({self.arch!r}, pretrained={weights!r})), or pass "
                    f"--model.arch {LOCAL_DIR}/path"
                ) from error
            from open_clip.pretrained import download_pretrained

            cached = download_pretrained(open_clip.get_pretrained_cfg(self.arch, weights))
            return model, Path(cached)
        if weights != RANDOM and Path(weights).suffix == "" and not Path(weights).exists():
            raise VfeError(
                f"--model.weights {weights!r} is neither a pretrained tag of {self.arch} "
                f"({', '.join(tags) or 'none'}) nor a file"
            )
        weights_file = resolve_weights_file(weights, f"open_clip {self.arch}")
        recipe = recipe_for_file(self.arch, self.recipe, weights)
        if self.recipe is not None:
            check_quick_gelu(self.arch, self.recipe)
        try:
            model = open_clip.create_model(
                self.arch,
                pretrained=None if weights_file is None else str(weights_file),
                device="cpu",
                # The size is the network's own, as open_clip sets it for a tag.
                force_preprocess_cfg={k: v for k, v in (recipe or {}).items() if k != "size"},
            )
        except (RuntimeError, KeyError, ValueError, EOFError) as error:
            raise VfeError(
                f"--model.weights {weights!r} is not an open_clip {self.arch} checkpoint: {error}"
            ) from error
        return model, weights_file

    @property
    def feature_dim(self) -> int:
        self.configure_model()
        return int(self._feature_dim)

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """`(B, 3, h, w)` normalised frames -> `(B, D)` image embeddings (not L2-normalised)."""
        return self.model.encode_image(samples, normalize=False)

    def text_tower(self) -> TextTower:
        """The model's own text tower and tokenizer (token states: its `ln_final` output)."""
        self.configure_model()
        text = getattr(self.model, "text", self.model)  # CustomTextCLIP keeps it in `text`
        final_norm = getattr(text, "ln_final", None)
        if final_norm is None:
            raise VfeError(
                f"{self.arch}'s text tower ({type(text).__name__}) has no final LayerNorm "
                "whose token states vfe text could write"
            )
        try:
            tokenizer = _open_clip().get_tokenizer(self.arch)
        except (OSError, RuntimeError, ValueError) as error:
            raise VfeError(f"the tokenizer of {self.arch} could not be loaded: {error}") from error
        inner = getattr(tokenizer, "tokenizer", None)
        pad_token_id = getattr(inner, "pad_token_id", None) or 0
        return TextTower(self.model, final_norm, tokenizer, pad_token_id=pad_token_id)
