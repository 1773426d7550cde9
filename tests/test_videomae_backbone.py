"""VideoMAE backbone: each clip's feature equals transformers' own pipeline (the checkpoint's
image processor + the model's pooled output) on the frames FFmpeg presents, through the real
`from_pretrained` loading of a folder."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cosine, extract, reference_decode, run_vfe

from vfe.backbones.videomae import VideoMAEBackbone
from vfe.errors import VfeError
from vfe.planning.provenance import read_provenance

transformers = pytest.importorskip("transformers")

NUM_FRAMES = 4
CLIP_LEN_SECONDS = 1


def write_checkpoint(folder: Path, model_class: str, resample: int) -> Path:
    """A random VideoMAE saved as `save_pretrained` writes it, with its image processor."""
    config = transformers.VideoMAEConfig(
        image_size=64,
        patch_size=16,
        num_frames=NUM_FRAMES,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        num_labels=5,
    )
    torch.manual_seed(0)
    getattr(transformers, model_class)(config).save_pretrained(folder)
    processor = transformers.VideoMAEImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        resample=resample,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(folder)
    return folder


def transformers_own_features(folder: Path, video: Path) -> np.ndarray:
    """The image processor on NUM_FRAMES frames spread uniformly over each window
    (`linspace`, PyTorchVideo's rule), then the model's pooled output."""
    processor = transformers.VideoMAEImageProcessor.from_pretrained(folder)
    config = transformers.VideoMAEConfig.from_pretrained(folder)
    if "VideoMAEForVideoClassification" in config.architectures:
        model = transformers.VideoMAEForVideoClassification.from_pretrained(folder).eval()
        model.classifier = torch.nn.Identity()
        pooled = lambda pixels: model(pixel_values=pixels).logits  # noqa: E731
    else:
        model = transformers.VideoMAEModel.from_pretrained(folder).eval()
        pooled = lambda pixels: model(pixel_values=pixels).last_hidden_state.mean(1)  # noqa: E731
    decoded = reference_decode(video)
    features = []
    for window in decoded.clip_frames(Fraction(CLIP_LEN_SECONDS)):
        picks = torch.linspace(0, len(window) - 1, NUM_FRAMES).long()
        frames = [np.ascontiguousarray(decoded.frames[window[i]]) for i in picks]
        pixels = processor(frames, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            features.append(pooled(pixels)[0].numpy())
    return np.stack(features)


@pytest.mark.parametrize(
    ("model_class", "resample"),
    [("VideoMAEForVideoClassification", 2), ("VideoMAEForPreTraining", 3)],
    ids=["fine-tuned, bilinear", "self-supervised, bicubic"],
)
def test_features_match_transformers_pipeline(
    model_class, resample, real_world_videos: dict[str, Path], tmp_path: Path
):
    folder = write_checkpoint(tmp_path / "checkpoint", model_class, resample)
    video = real_world_videos["rotated_90.mp4"]
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / video.name).symlink_to(video)
    model = VideoMAEBackbone(arch=str(folder))
    assert model.input_spec.frames_per_clip == NUM_FRAMES and model.feature_dim == 32
    extract(model, videos, tmp_path / "out", clip_len=float(CLIP_LEN_SECONDS), batch_size=3)
    ours = np.load(tmp_path / "out" / "rotated_90.npz")["features"]
    reference = transformers_own_features(folder, video)
    assert ours.shape == reference.shape == (4, 32)
    assert cosine(ours, reference).min() >= 0.999
    assert len(model.weights_record()["weights_sha256"]) == 64


def test_a_checkpoint_of_another_shape_is_refused(tmp_path: Path):
    folder = write_checkpoint(tmp_path / "checkpoint", "VideoMAEForVideoClassification", 2)
    (folder / "model.safetensors").unlink()
    from safetensors.torch import save_file

    save_file({"unrelated.weight": torch.zeros(2)}, folder / "model.safetensors")
    with pytest.raises(VfeError, match="do not fit VideoMAEForVideoClassification"):
        VideoMAEBackbone(arch=str(folder)).configure_model()


def test_weights_other_than_random_are_refused():
    with pytest.raises(VfeError, match="takes only 'random'"):
        VideoMAEBackbone(arch="MCG-NJU/videomae-base", weights="/some/file.bin").configure_model()


@pytest.mark.slow
def test_a_repo_id_runs_offline_from_a_filled_hugging_face_cache(video_dir: Path, tmp_path: Path):
    """The cluster case: a cache filled elsewhere, HF_HUB_OFFLINE=1, a repo id as --model.arch."""
    snapshot = tmp_path / "hub" / "models--some-org--videomae-tiny" / "snapshots" / "abc123"
    write_checkpoint(snapshot, "VideoMAEForVideoClassification", 2)
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    result = run_vfe(
        "--model", "videomae", "--model.arch", "some-org/videomae-tiny", "--input_dir",
        str(video_dir), "--output_dir", "out", "--clip_len", "1", cwd=tmp_path,
        env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"},
        process=True,  # huggingface_hub reads these variables when it is first imported
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    provenance = read_provenance(tmp_path / "out" / "moving.npz")
    assert provenance["weights"] == str(snapshot.resolve())
    assert np.load(tmp_path / "out" / "moving.npz")["features"].shape == (4, 32)
