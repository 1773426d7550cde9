"""PyTorchVideo zoo backbones: each clip's feature equals PyTorchVideo's own pipeline (its
transforms + the hub model without its projection and softmax), weights from a file."""

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms._functional_tensor
from conftest import cosine, extract, reference_decode

from vfe.backbones.pytorchvideo_zoo import ZOO, PyTorchVideoBackbone
from vfe.errors import VfeError

sys.modules.setdefault(
    "torchvision.transforms.functional_tensor", torchvision.transforms._functional_tensor
)
from pytorchvideo.models import hub  # noqa: E402
from pytorchvideo.transforms import Normalize, ShortSideScale, UniformTemporalSubsample  # noqa: E402
from torchvision.transforms import CenterCrop, Compose, Lambda  # noqa: E402

CLIP_LEN_SECONDS = 4  # the whole 2.04-s file is one clip


def pytorchvideos_own_features(arch: str, weights: Path, video: Path) -> np.ndarray:
    """The torch hub example's transforms and the hub model, on what FFmpeg presents in each
    window; the head's projection and softmax removed."""
    recipe = ZOO[arch]
    transform = Compose(
        [
            UniformTemporalSubsample(recipe.frames_per_clip),
            Lambda(lambda x: x / 255.0),
            Normalize([0.45] * 3, [0.225] * 3),
            ShortSideScale(size=recipe.side_size),
            CenterCrop(recipe.crop_size),
        ]
    )
    model = getattr(hub, arch)(pretrained=False)
    model.load_state_dict(torch.load(weights)["model_state"])
    head = model.head if hasattr(model, "head") else model.blocks[-1]
    head.proj, head.activation = torch.nn.Identity(), None
    model.eval()
    decoded = reference_decode(video)
    frames = torch.from_numpy(np.stack(decoded.frames))  # (T, H, W, C)
    features = []
    for window in decoded.clip_frames(Fraction(CLIP_LEN_SECONDS)):
        clip = frames[window].permute(3, 0, 1, 2).float()  # (C, T, H, W)
        with torch.no_grad():
            features.append(model(transform(clip)[None])[0].numpy())
    return np.stack(features)


# The larger archs (3-5 s each) run in the full suite only; the quick tier keeps one of each
# family's smaller members.
SLOW_ARCHS = frozenset({"csn_r101", "mvit_base_16x4", "r2plus1d_r50", "x3d_l"})


@pytest.mark.parametrize(
    "arch",
    [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHS else a for a in sorted(ZOO)],
)
def test_features_match_pytorchvideos_pipeline(
    arch: str, real_world_videos: dict[str, Path], tmp_path: Path
):
    torch.manual_seed(0)
    weights = tmp_path / "random.pyth"
    torch.save({"model_state": getattr(hub, arch)(pretrained=False).state_dict()}, weights)
    video = real_world_videos["edit_list_cut.mp4"]
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / video.name).symlink_to(video)
    model = PyTorchVideoBackbone(arch=arch, weights=str(weights))
    extract(model, videos, tmp_path / "out", clip_len=float(CLIP_LEN_SECONDS))
    ours = np.load(tmp_path / "out" / "edit_list_cut.npz")["features"]
    reference = pytorchvideos_own_features(arch, weights, video)
    assert ours.shape == reference.shape == (1, ZOO[arch].feature_dim)
    assert cosine(ours, reference).min() >= 0.999


def test_unknown_arch_and_foreign_file_are_one_line_errors(tmp_path: Path):
    with pytest.raises(VfeError, match="choose one of x3d_xs"):
        PyTorchVideoBackbone(arch="x3d_xxl").configure_model()
    other = tmp_path / "x3d.pyth"
    torch.save({"model_state": hub.x3d_xs(pretrained=False).state_dict()}, other)
    with pytest.raises(VfeError, match="does not fit PyTorchVideo I3D_8x8_R50"):
        PyTorchVideoBackbone(arch="i3d_r50", weights=str(other)).configure_model()
