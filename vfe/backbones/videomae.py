"""VideoMAE (Hugging Face `transformers`): one pooled feature per clip of 16 frames.

The recipe is the checkpoint's own image processor (`preprocessor_config.json`: short side,
crop, resampling, mean/std) and its config's number of frames. The feature is what the model's
classification head sees: `fc_norm` of the mean over the tokens for fine-tuned checkpoints
(`VideoMAEForVideoClassification`), the mean of the last hidden states otherwise (the
self-supervised `MCG-NJU/videomae-base`, whose head is a decoder).
"""

import hashlib
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from vfe.backbones.base import LoadedBackbone
from vfe.backbones.weights import RANDOM, resolve_weights_file
from vfe.data.input_spec import InputSpec
from vfe.errors import VfeError
from vfe.optional import import_extra
from vfe.planning.provenance import sha256_of_file

CLASSIFIER = "VideoMAEForVideoClassification"
# PIL resampling codes (transformers' PILImageResampling) the data path can reproduce.
RESAMPLING = {2: InterpolationMode.BILINEAR, 3: InterpolationMode.BICUBIC}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _transformers() -> ModuleType:
    return import_extra("transformers", "transformers", "videomae")


def checkpoint_dir(arch: str, model: str = "videomae") -> Path:
    """A local folder as is; a Hugging Face repo id from the cache (downloaded if absent)."""
    folder = Path(arch).expanduser()
    if folder.is_dir():
        return folder
    huggingface_hub = import_extra("huggingface_hub", "transformers", model)
    try:
        return Path(
            huggingface_hub.snapshot_download(
                arch, allow_patterns=["*.json", "*.safetensors", "*.bin"]
            )
        )
    except (OSError, ValueError) as error:  # hub errors are OSErrors; a bad id a ValueError
        raise VfeError(
            f"--model.arch {arch!r} is neither a local folder nor a Hugging Face repo vfe could "
            f"get ({error}). To run offline, fill the Hugging Face cache on a machine with a "
            "network (huggingface_hub.snapshot_download) and set HF_HUB_OFFLINE=1, or pass the "
            "folder"
        ) from error


def weights_sha256(folder: Path) -> str:
    """One checksum over the folder's weight files (sharded checkpoints have several)."""
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise VfeError(f"{folder} holds no weights (*.safetensors or *.bin)")
    if len(files) == 1:
        return sha256_of_file(files[0])
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{sha256_of_file(path)}\n".encode())
    return digest.hexdigest()


def input_spec_of(processor: Any, num_frames: int) -> InputSpec:
    """The image processor's eval recipe -> InputSpec (its resize is antialiased)."""
    short_side = processor.size.get("shortest_edge") if processor.do_resize else None
    crop = processor.crop_size if processor.do_center_crop else None
    if short_side is None or crop is None or processor.resample not in RESAMPLING:
        raise VfeError(
            f"VideoMAE image processor recipe (size {processor.size}, crop {crop}, resample "
            f"{processor.resample}) is not one vfe reproduces: it needs a shortest_edge resize, "
            "a center crop, and bilinear or bicubic resampling"
        )
    if not processor.do_rescale or abs(processor.rescale_factor - 1 / 255) > 1e-12:
        raise VfeError(
            f"VideoMAE image processor rescales by {processor.rescale_factor}, not 1/255"
        )
    return InputSpec(
        frames_per_clip=num_frames,
        resize_size=int(short_side),
        crop_size=(int(crop["height"]), int(crop["width"])),
        interpolation=RESAMPLING[processor.resample],
        antialias=True,
        mean=tuple(float(v) for v in processor.image_mean),
        std=tuple(float(v) for v in processor.image_std),
        default_batch_size=8,
        stack_frames=True,
    )


class VideoMAEBackbone(LoadedBackbone):
    """VideoMAE on the checkpoint's number of frames (16) spread uniformly over each clip.

    Args:
        arch: a Hugging Face repo id (`MCG-NJU/videomae-base`,
            `MCG-NJU/videomae-base-finetuned-kinetics`; from the Hugging Face cache, downloaded
            if absent) or a local folder with config.json, preprocessor_config.json and weights.
        weights: unset for the checkpoint's weights, or 'random' (its architecture, random).
    """

    name: ClassVar[str] = "videomae"

    def __init__(
        self, arch: str = "MCG-NJU/videomae-base-finetuned-kinetics", weights: str | None = None
    ) -> None:
        super().__init__(arch, weights)

    def load(self) -> tuple[nn.Module, InputSpec, dict[str, str]]:
        if self.weights not in (None, RANDOM):
            raise VfeError(
                f"--model.weights {self.weights!r}: VideoMAE weights come with --model.arch "
                "(a repo id or a folder); --model.weights takes only 'random'"
            )
        resolve_weights_file(self.weights, f"VideoMAE {self.arch}")  # warns for random
        transformers = _transformers()
        folder = checkpoint_dir(self.arch)
        try:
            config = transformers.VideoMAEConfig.from_pretrained(folder)
            processor = transformers.VideoMAEImageProcessor.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise VfeError(f"{folder} is not a VideoMAE checkpoint: {error}") from error
        classifier = CLASSIFIER in (config.architectures or [])
        model_class = (
            transformers.VideoMAEForVideoClassification
            if classifier
            else transformers.VideoMAEModel
        )
        if self.weights == RANDOM:
            model = model_class(config)
        else:
            model, info = model_class.from_pretrained(folder, output_loading_info=True)
            if info["missing_keys"]:
                raise VfeError(
                    f"{folder}'s weights do not fit {model_class.__name__}: "
                    f"{len(info['missing_keys'])} missing keys "
                    f"(e.g. {sorted(info['missing_keys'])[:3]})"
                )
        if classifier:
            model.classifier = nn.Identity()  # its input is the pooled feature
        random = self.weights == RANDOM
        record = {
            "arch": self.arch,
            "weights": RANDOM if random else str(folder.resolve()),
            "weights_sha256": RANDOM if random else weights_sha256(folder),
        }
        return model.float().eval(), input_spec_of(processor, int(config.num_frames)), record

    @property
    def feature_dim(self) -> int:
        self.configure_model()
        return int(self.model.config.hidden_size)

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """`(B, 3, T, h, w)` normalised clips -> `(B, hidden_size)`."""
        pixel_values = samples.transpose(1, 2)  # VideoMAE takes (B, T, C, H, W)
        output = self.model(pixel_values=pixel_values)
        if hasattr(output, "logits"):  # the classification head without its last layer
            return output.logits
        return output.last_hidden_state.mean(1)
