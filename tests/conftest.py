"""Shared fixtures: synthetic videos and random-weight checkpoints saved to files."""

import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

sys.path.insert(0, str(Path(__file__).parent))

from vfe.synthetic import write_video

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from clip.model import CLIP  # noqa: E402

from vfe.backbones.base import Backbone  # noqa: E402
from vfe.data import VideoDataModule  # noqa: E402
from vfe.writer import FeatureWriter  # noqa: E402

FPS = 25
# 85 frames at 25 fps with 2 s clips: one clip of 50 frames and a short last one of 35.
NUM_FRAMES = 85


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 3.4 s video (2 clips) and, in a sub-folder, a 1 s video (1 clip)."""
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "moving.mp4", NUM_FRAMES, FPS, seed=1)
    write_video(folder / "nested" / "short.mp4", 25, FPS, seed=2)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP ViT (32 px input, 32-d embedding) saved as a state dict."""
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        image_resolution=32,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=8,
        context_length=8,
        vocab_size=64,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=1,
    )
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def slowfast_pyth_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SlowFast R50 saved as a PyTorchVideo checkpoint: `{"model_state": ...}`."""
    from pytorchvideo.models.hub import slowfast_r50

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "slowfast_random.pyth"
    torch.save({"model_state": slowfast_r50(pretrained=False).state_dict()}, path)
    return path


def extract(
    model: Backbone,
    input_dir: Path,
    output_dir: Path,
    precision: str = "32-true",
    **data_options,
) -> FeatureWriter:
    """Run the real predict pipeline in this process (no worker processes unless asked)."""
    data_options.setdefault("num_workers", 0)
    writer = FeatureWriter(output_dir=output_dir)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        logger=False,
        callbacks=[writer],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = VideoDataModule(input_dir=input_dir, output_dir=output_dir, **data_options)
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    return writer
