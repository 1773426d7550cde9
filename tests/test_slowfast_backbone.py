import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms._functional_tensor
from conftest import cosine, extract, reference_decode

from vfe.backbones.slowfast import SlowFastBackbone
from vfe.bench.synthetic import write_video
from vfe.errors import VfeError

# pytorchvideo.transforms imports a torchvision module that was renamed; the reference pipeline
# below needs it, vfe itself does not.
sys.modules.setdefault(
    "torchvision.transforms.functional_tensor", torchvision.transforms._functional_tensor
)
from pytorchvideo.models.hub import slowfast_r50  # noqa: E402
from pytorchvideo.transforms import (  # noqa: E402
    Normalize,
    ShortSideScale,
    UniformTemporalSubsample,
)
from torchvision.transforms import CenterCrop, Compose, Lambda  # noqa: E402


class PackPathway(torch.nn.Module):
    """PyTorchVideo's tutorial transform: `[slow, fast]` from `(C, T, H, W)` frames, alpha 4."""

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        slow = torch.index_select(
            frames, 1, torch.linspace(0, frames.shape[1] - 1, frames.shape[1] // 4).long()
        )
        return [slow, frames]


CANONICAL_TRANSFORM = Compose(
    [
        UniformTemporalSubsample(32),
        Lambda(lambda x: x / 255.0),
        Normalize([0.45, 0.45, 0.45], [0.225, 0.225, 0.225]),
        ShortSideScale(size=256),
        CenterCrop(256),
        PackPathway(),
    ]
)


def reference_features(weights: Path, video: Path, clip_len: float) -> np.ndarray:
    """PyTorchVideo's model and canonical inference transforms on the frames a sequential FFmpeg
    decode presents in each contract window."""
    model = slowfast_r50(pretrained=False)
    model.load_state_dict(torch.load(weights)["model_state"])
    model.blocks[-1].proj = None
    model.eval()
    decoded = reference_decode(video)
    frames = torch.from_numpy(np.stack(decoded.frames))  # (T, H, W, C)
    features = []
    for clip_frames in decoded.clip_frames(Fraction(str(clip_len))):
        clip = frames[clip_frames].permute(3, 0, 1, 2).float()  # (C, T, H, W)
        inputs = [pathway[None] for pathway in CANONICAL_TRANSFORM(clip)]
        with torch.no_grad():
            features.append(model(inputs)[0].numpy())
    return np.stack(features)


@pytest.fixture(scope="module")
def slowfast_video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.2 s at 25 fps with 1 s clips: a 25-frame clip and a 5-frame one (frames repeat)."""
    folder = tmp_path_factory.mktemp("slowfast_videos")
    write_video(folder / "v.mp4", num_frames=30, fps=25, height=72, width=96, seed=5)
    return folder


def test_features_match_pytorchvideo_canonical_pipeline(
    slowfast_video_dir: Path, slowfast_pyth_file: Path, tmp_path: Path
):
    model = SlowFastBackbone(weights=str(slowfast_pyth_file))
    extract(model, slowfast_video_dir, tmp_path, clip_len=1.0)
    saved = np.load(tmp_path / "v.npz")
    reference = reference_features(slowfast_pyth_file, slowfast_video_dir / "v.mp4", 1.0)
    ours = saved["features"]
    assert ours.shape == reference.shape == (2, 2304)
    assert saved["features"].dtype == np.float32
    assert cosine(ours, reference).min() >= 0.999
    np.testing.assert_allclose(saved["timestamps"], [[0.0, 1.0], [1.0, 1.2]], atol=1e-6)


# The files whose grid most differs from frame counting: a cut with an edit list, a stream
# that starts at 1.48 s, decode-order AVI timestamps, and a VFR gap longer than a clip.
SLOWFAST_FILES = ["edit_list_cut.mp4", "broadcast.ts", "xvid_bframes.avi", "vfr_gap.mkv"]


@pytest.fixture(scope="module")
def real_world_references(real_world_videos, slowfast_pyth_file: Path) -> dict[str, np.ndarray]:
    """PyTorchVideo's features of the SLOWFAST_FILES, computed once for both runs below."""
    return {
        name: reference_features(slowfast_pyth_file, real_world_videos[name], 2.0)
        for name in SLOWFAST_FILES
    }


@pytest.mark.slow
@pytest.mark.parametrize("convert_on", ["workers", "model"])
def test_features_match_pytorchvideo_on_real_world_files(
    real_world_videos, real_world_references, slowfast_pyth_file: Path, tmp_path: Path, convert_on
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in SLOWFAST_FILES:
        shutil.copy(real_world_videos[name], inputs / name)
    model = SlowFastBackbone(weights=str(slowfast_pyth_file))
    extract(model, inputs, tmp_path / "out", batch_size=4, convert_on=convert_on)
    for name in SLOWFAST_FILES:
        ours = np.load((tmp_path / "out" / name).with_suffix(".npz"))["features"]
        reference = real_world_references[name]
        assert ours.shape == reference.shape, name
        assert cosine(ours, reference).min() >= 0.999, name


def test_plain_and_headless_state_dicts_load(slowfast_pyth_file: Path, tmp_path: Path):
    state = torch.load(slowfast_pyth_file)["model_state"]
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    headless = tmp_path / "headless.pt"
    torch.save({k: v for k, v in state.items() if ".proj." not in k}, headless)
    expected = state["blocks.0.multipathway_blocks.0.conv.weight"]
    for path in (plain, headless):
        model = SlowFastBackbone(weights=str(path))
        model.configure_model()
        assert isinstance(model.model.blocks[-1].proj, torch.nn.Identity)
        loaded = model.model.blocks[0].multipathway_blocks[0].conv.weight
        assert torch.equal(loaded, expected)


def test_file_that_does_not_fit_is_a_clear_error(tmp_path: Path, tiny_clip_file: Path):
    garbage = tmp_path / "garbage.pyth"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(VfeError, match="could not be read as a PyTorch checkpoint"):
        SlowFastBackbone(weights=str(garbage)).configure_model()
    with pytest.raises(VfeError, match="does not fit SlowFast R50"):
        SlowFastBackbone(weights=str(tiny_clip_file)).configure_model()


def test_official_weights_come_from_the_torch_hub_cache(
    slowfast_pyth_file: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "SLOWFAST_8x8_R50.pyth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(slowfast_pyth_file.read_bytes())
    model = SlowFastBackbone()
    model.configure_model()
    key = "blocks.0.multipathway_blocks.1.conv.weight"
    expected = torch.load(slowfast_pyth_file)["model_state"][key]
    assert torch.equal(model.model.state_dict()[key], expected)


def test_official_weights_offline_says_how_to_run_offline(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(VfeError) as error:
        SlowFastBackbone().configure_model()
    message = str(error.value)
    assert "SLOWFAST_8x8_R50.pyth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "--model.weights" in message
