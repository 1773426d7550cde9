"""PANN CNN14 (AudioSet, `Cnn14_mAP=0.431.pth`): 2048-d audio features of each clip window.

The recipe Lighthouse's `clip_slowfast_pann` features and UMT use: mono audio at 32 kHz, the
model's own front end (STFT 1024, hop 320, 64 mel bands, 50-14,000 Hz), its `embedding` output
for each clip window. The network is panns_inference's own `Cnn14` class; the package's
`__init__` downloads a label file when imported, so only its `models` module is loaded
(`_cnn14_class`), and vfe never goes to the network at run time.
"""

import importlib
import importlib.util
import pickle
import sys
import types
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from vfe.backbones.base import Backbone
from vfe.backbones.weights import (
    RANDOM,
    download_official,
    resolve_weights_file,
    weights_record,
)
from vfe.data.input_spec import AudioSpec
from vfe.errors import VfeError
from vfe.optional import import_extra

SAMPLE_RATE_HZ = 32000
FRONT_END = {"window_size": 1024, "hop_size": 320, "mel_bins": 64, "fmin": 50, "fmax": 14000}
AUDIOSET_CLASSES = 527
OFFICIAL_NAME = "PANN Cnn14_mAP=0.431 (AudioSet)"
OFFICIAL_URL = "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
# Where panns_inference's AudioTagging looks for it; no checksum is published for it.
OFFICIAL_FILE = Path.home() / "panns_data" / "Cnn14_mAP=0.431.pth"
# The shortest window CNN14's six poolings take (Lighthouse asserts the same bound).
MIN_WINDOW_SAMPLES = 9920


def _cnn14_class() -> type[nn.Module]:
    """panns_inference's `Cnn14`, imported without the package's `__init__` (which reads, and
    if missing downloads, AudioSet's label file)."""
    import_extra("torchlibrosa", "audio", "pann")
    if "panns_inference.models" not in sys.modules:
        spec = importlib.util.find_spec("panns_inference")
        if spec is None or spec.submodule_search_locations is None:
            import_extra("panns_inference", "audio", "pann")  # the one-line error
        package = types.ModuleType("panns_inference")
        package.__path__ = list(spec.submodule_search_locations)
        had = sys.modules.get("panns_inference")
        sys.modules["panns_inference"] = had or package
        try:
            importlib.import_module("panns_inference.models")
        finally:
            if had is None:  # the real package stays importable (and downloading) as it was
                del sys.modules["panns_inference"]
    return sys.modules["panns_inference.models"].Cnn14


def load_cnn14(weights: str | None) -> nn.Module:
    """CNN14 with official, random or file weights (`{"model": state_dict}` as the official
    file, or a plain state dict), on the CPU, in eval mode."""
    model = _cnn14_class()(sample_rate=SAMPLE_RATE_HZ, classes_num=AUDIOSET_CLASSES, **FRONT_END)
    weights_file = resolve_weights_file(weights, "PANN CNN14")
    if weights == RANDOM:
        return model.eval()
    source = weights_file if weights_file is not None else OFFICIAL_FILE
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise VfeError(
            f"--model.weights {str(source)!r} could not be read as a PyTorch checkpoint: {error}"
        ) from error
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise VfeError(f"{source} does not fit PANN CNN14: {str(error)[:300]}") from error
    return model.eval()


class PANNBackbone(Backbone):
    """PANN CNN14 on each clip's window of audio (mono, 32 kHz) -> its 2048-d `embedding`.

    Args:
        weights: a local checkpoint (`Cnn14_mAP=0.431.pth`'s layout, `{"model": state_dict}`,
            or a plain state dict), 'random', or unset for the official file in
            panns_inference's cache (`~/panns_data/Cnn14_mAP=0.431.pth`, downloaded if absent).
    """

    name: ClassVar[str] = "pann"

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.weights = weights
        self.model: nn.Module | None = None
        self._weights_record: dict[str, str] = {}
        # The recipe loads with librosa, which resamples with soxr at its HQ setting: parity
        # with it decides (FFmpeg's swresample moves CNN14's log-mel bands where there is
        # little energy: cosine 0.89 on a window of a tone sweep).
        self._input_spec = AudioSpec(
            sample_rate_hz=SAMPLE_RATE_HZ, default_batch_size=16, resampler="soxr_hq"
        )

    def prepare_data(self) -> None:
        if self.weights is None:
            download_official(OFFICIAL_URL, OFFICIAL_FILE, None, OFFICIAL_NAME)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = load_cnn14(self.weights)
            self._weights_record = {
                "arch": "Cnn14",
                **weights_record(self.weights, OFFICIAL_NAME, OFFICIAL_FILE, None),
            }

    @property
    def input_spec(self) -> AudioSpec:
        return self._input_spec

    @property
    def feature_dim(self) -> int:
        return 2048

    def weights_record(self) -> dict[str, str]:
        self.configure_model()
        return self._weights_record

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """`(B, window_samples)` float32 waveforms -> `(B, 2048)` float32."""
        if samples.shape[-1] < MIN_WINDOW_SAMPLES:
            raise VfeError(
                f"--clip_len gives {samples.shape[-1]} samples a window at 32 kHz; PANN CNN14 "
                f"needs at least {MIN_WINDOW_SAMPLES} (clips of 0.31 s or longer)"
            )
        return self.encode(samples.to(self.dtype)).float()

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """`(B, window_samples)` waveforms -> `(B, 2048)`."""
        return self.model(samples, None)["embedding"]
