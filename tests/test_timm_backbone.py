"""timm backbone: features equal timm's own eval pipeline (`resolve_data_config` +
`create_transform` + the headless forward), weights loaded from a file the way timm loads one."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cosine, extract, reference_image_features

from vfe.backbones.timm_image import TimmBackbone
from vfe.errors import VfeError

timm = pytest.importorskip("timm")


def timms_own_features(arch: str, weights: Path, video: Path, img_size=None) -> np.ndarray:
    options = {"img_size": img_size} if img_size else {}
    model = timm.create_model(
        arch,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(weights)},
        num_classes=0,
        **options,
    ).eval()
    args = {"input_size": (3, *img_size)} if img_size else {}
    transform = timm.data.create_transform(**timm.data.resolve_data_config(args, model=model))
    return reference_image_features(video, transform, model)


@pytest.mark.parametrize(
    ("arch", "img_size", "video_name", "dim"),
    [
        # DINOv2 at a non-square size: the file's 518-px position embeddings are resampled.
        pytest.param(
            "vit_small_patch14_dinov2.lvd142m",
            [98, 140],
            "rotated_90.mp4",
            384,
            marks=pytest.mark.slow,  # 5 s: in the full suite only
        ),
        # crop_pct 0.95: the short side goes to floor(224 / 0.95) = 235 before the crop.
        ("convnext_atto.d2_in1k", None, "edit_list_cut.mp4", 320),
    ],
    ids=["dinov2 non-square", "convnext crop_pct"],
)
def test_features_match_timms_pipeline(
    arch, img_size, video_name, dim, real_world_videos: dict[str, Path], tmp_path: Path
):
    torch.manual_seed(0)
    weights = tmp_path / "weights.pth"
    torch.save(timm.create_model(arch, pretrained=False).state_dict(), weights)
    video = real_world_videos[video_name]
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / video.name).symlink_to(video)
    model = TimmBackbone(arch=arch, weights=str(weights), img_size=img_size)
    assert model.feature_dim == dim
    if img_size:
        assert model.input_spec.sample_size == tuple(img_size)
    extract(model, videos, tmp_path / "out", batch_size=16)
    ours = np.load(tmp_path / "out" / f"{video.stem}.npz")["features"]
    reference = timms_own_features(arch, weights, video, img_size)
    assert ours.shape == reference.shape
    assert cosine(ours, reference).min() >= 0.999
    assert model.weights_record()["weights_sha256"] != "random"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"arch": "no_such_model"}, "is not a timm model"),
        ({"arch": "convnext_atto", "weights": "random", "img_size": [0, 3]}, "positive int"),
        ({"arch": "convnext_atto", "weights": "/no/such.pth"}, "no such file"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(VfeError, match=message):
        TimmBackbone(**options).configure_model()


def test_a_file_of_another_model_is_a_clear_error(tmp_path: Path):
    weights = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(2)}, weights)
    with pytest.raises(VfeError, match=r"could not load --model.weights .* into timm"):
        TimmBackbone(arch="convnext_atto", weights=str(weights)).configure_model()
