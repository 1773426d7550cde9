"""LAION-CLAP (Hugging Face `transformers`): the audio embedding of each clip's window of audio.

The checkpoint's own feature extractor (`preprocessor_config.json`: 48 kHz, log-mel, padding
of a window shorter than its 10-s input) turns each window into the model's input, and
`ClapModel.get_audio_features` gives the L2-normalised projected embedding (512-d for
`laion/clap-htsat-unfused`). The audio is mono at the extractor's rate, resampled as librosa
loads it (soxr HQ), which is how LAION-CLAP's own examples read audio. `vfe text --like` a CLAP
folder gives its queries' text features (`ClapTextTower`).
"""

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from vfe.backbones.base import LoadedBackbone
from vfe.backbones.videomae import checkpoint_dir, weights_sha256
from vfe.backbones.weights import RANDOM, resolve_weights_file
from vfe.data.input_spec import AudioSpec
from vfe.errors import VfeError
from vfe.optional import import_extra


class ClapTextTower:
    """CLAP's text side for `vfe text`: per query the text model's token states `(L, width)`
    (its `last_hidden_state`, L = the query's tokens with start and end), and the pooled
    embedding `get_text_features` gives (projected, L2-normalised, as the audio rows are)."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    @torch.inference_mode()
    def encode(self, queries: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
        tokens = self.tokenizer(queries, padding=True, truncation=True, return_tensors="pt")
        states = self.model.text_model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).last_hidden_state
        pooled = self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output
        lengths = tokens["attention_mask"].sum(1).tolist()
        return [states[i, :length].float() for i, length in enumerate(lengths)], pooled.float()


class CLAPBackbone(LoadedBackbone):
    """LAION-CLAP's audio tower on each clip's window of audio -> its projected embedding.

    Args:
        arch: a Hugging Face repo id (`laion/clap-htsat-unfused`, `laion/larger_clap_general`;
            from the Hugging Face cache, downloaded if absent) or a local folder with
            config.json, preprocessor_config.json and the weights.
        weights: unset for the checkpoint's weights, or 'random' (its architecture, random).
    """

    name: ClassVar[str] = "clap"

    def __init__(self, arch: str = "laion/clap-htsat-unfused", weights: str | None = None) -> None:
        super().__init__(arch, weights)
        self.extractor: Any = None

    def load(self) -> tuple[nn.Module, AudioSpec, dict[str, str]]:
        if self.weights not in (None, RANDOM):
            raise VfeError(
                f"--model.weights {self.weights!r}: CLAP weights come with --model.arch (a repo "
                "id or a folder); --model.weights takes only 'random'"
            )
        resolve_weights_file(self.weights, f"CLAP {self.arch}")  # warns for random
        transformers = import_extra("transformers", "transformers", "clap")
        folder = checkpoint_dir(self.arch, "clap")
        try:
            config = transformers.ClapConfig.from_pretrained(folder)
            self.extractor = transformers.ClapFeatureExtractor.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise VfeError(f"{folder} is not a CLAP checkpoint: {error}") from error
        if self.weights == RANDOM:
            model = transformers.ClapModel(config)
        else:
            model, info = transformers.ClapModel.from_pretrained(folder, output_loading_info=True)
            missing = [key for key in info["missing_keys"] if not key.startswith("text_")]
            if missing:
                raise VfeError(
                    f"{folder}'s weights do not fit ClapModel: {len(missing)} missing keys "
                    f"(e.g. {sorted(missing)[:3]})"
                )
        random = self.weights == RANDOM
        record = {
            "arch": self.arch,
            "weights": RANDOM if random else str(folder.resolve()),
            "weights_sha256": RANDOM if random else weights_sha256(folder),
        }
        spec = AudioSpec(
            sample_rate_hz=int(self.extractor.sampling_rate),
            default_batch_size=16,
            resampler="soxr_hq",
        )
        return model.float().eval(), spec, record

    @property
    def feature_dim(self) -> int:
        self.configure_model()
        return int(self.model.config.projection_dim)

    def text_tower(self) -> ClapTextTower:
        """The checkpoint's tokenizer and text model, on the CPU in eval mode."""
        self.configure_model()
        transformers = import_extra("transformers", "transformers", "clap")
        folder = checkpoint_dir(self.arch, "clap")
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise VfeError(f"{folder} holds no tokenizer for CLAP's text side: {error}") from error
        return ClapTextTower(self.model.cpu().eval(), tokenizer)

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """`(B, window_samples)` float32 waveforms -> `(B, projection_dim)` float32."""
        self.configure_model()
        extractor = self.extractor
        longest = extractor.max_length_s * extractor.sampling_rate
        if samples.shape[-1] > longest and extractor.truncation != "fusion":
            raise VfeError(
                f"--clip_len gives {samples.shape[-1]} samples a window; {self.arch}'s feature "
                f"extractor takes {extractor.max_length_s} s and would crop a longer window at "
                f"random ({extractor.truncation}): use clips of {extractor.max_length_s} s or less"
            )
        windows = list(samples.float().cpu().numpy().astype(np.float32))
        inputs = extractor(windows, sampling_rate=extractor.sampling_rate, return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        inputs["input_features"] = inputs["input_features"].to(self.dtype)
        return self.encode(inputs).float()

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The feature extractor's inputs for B windows -> `(B, projection_dim)`."""
        return self.model.get_audio_features(**inputs).pooler_output
