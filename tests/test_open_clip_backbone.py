"""open_clip backbone: features equal open_clip's own pipeline (its preprocess + encode_image),
with the recipe of the weights (SigLIP's squash, no crop), through the real loading paths."""

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cosine, extract, reference_image_features

from vfe.backbones.openclip import OpenCLIPBackbone
from vfe.data.input_spec import ResizeMode
from vfe.errors import VfeError
from vfe.planning.provenance import read_provenance

open_clip = pytest.importorskip("open_clip")

TINY_MODEL_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
SIGLIP_RECIPE = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
    "resize_mode": "squash",
}


def write_local_dir(folder: Path, preprocess_cfg: dict) -> Path:
    """A random open_clip model as `local-dir:` holds it: open_clip_config.json + weights."""
    folder.mkdir(parents=True)
    config = {"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": preprocess_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def open_clips_own_features(arch: str, video: Path, **kwargs) -> np.ndarray:
    model, _, preprocess = open_clip.create_model_and_transforms(arch, **kwargs)
    model.eval()
    return reference_image_features(
        video, preprocess, lambda x: model.encode_image(x, normalize=False)
    )


@pytest.mark.parametrize(
    ("recipe", "resize_mode"),
    [(SIGLIP_RECIPE, ResizeMode.SQUASH), ({"interpolation": "bilinear"}, ResizeMode.SHORTEST)],
    ids=["siglip squash", "shortest crop"],
)
def test_local_dir_features_match_open_clips_pipeline(
    recipe, resize_mode, real_world_videos: dict[str, Path], tmp_path: Path
):
    folder = write_local_dir(tmp_path / "model", recipe)
    video = real_world_videos["rotated_90.mp4"]  # 64x96 frames: the squash changes the aspect
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / video.name).symlink_to(video)
    model = OpenCLIPBackbone(arch=f"local-dir:{folder}")
    assert model.input_spec.resize_mode is resize_mode
    squash = resize_mode is ResizeMode.SQUASH
    extract(model, videos, tmp_path / "out", batch_size=16)
    ours = np.load(tmp_path / "out" / "rotated_90.npz")["features"]
    reference = open_clips_own_features(f"local-dir:{folder}", video)
    assert ours.shape == reference.shape == (2, 24)
    assert cosine(ours, reference).min() >= 0.999
    provenance = read_provenance(tmp_path / "out" / "rotated_90.npz")
    assert provenance["weights"].endswith("open_clip_pytorch_model.bin")
    assert (
        provenance["weights_sha256"]
        == hashlib.sha256((folder / "open_clip_pytorch_model.bin").read_bytes()).hexdigest()
    )
    assert provenance["preprocessing"]["resize_mode" if squash else "short_side_size"] == (
        "squash" if squash else 64
    )


@pytest.fixture
def tiny_named_arch(tmp_path: Path, monkeypatch) -> str:
    """A built-in-style name with two pretrained tags of different recipes (as ViT-L-14 has)."""
    from open_clip import factory, pretrained

    name = "vfe-tiny-test"
    monkeypatch.setitem(factory._MODEL_CONFIGS, name, TINY_MODEL_CFG)
    monkeypatch.setitem(
        pretrained._PRETRAINED,
        name,
        {
            "siglip_like": {"hf_hub": "nobody/none/", **SIGLIP_RECIPE},
            "openai_like": {"hf_hub": "nobody/none/", "quick_gelu": True},
        },
    )
    return name


def test_weights_file_takes_the_recipe_of_the_named_tag(
    tiny_named_arch: str, real_world_videos: dict[str, Path], tmp_path: Path
):
    torch.manual_seed(1)
    weights = tmp_path / "weights.pt"
    torch.save(open_clip.create_model(tiny_named_arch).state_dict(), weights)
    video = real_world_videos["edit_list_cut.mp4"]
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / video.name).symlink_to(video)
    model = OpenCLIPBackbone(arch=tiny_named_arch, weights=str(weights), recipe="siglip_like")
    assert model.input_spec.resize_mode is ResizeMode.SQUASH
    assert model.input_spec.mean == (0.5, 0.5, 0.5) and model.input_spec.crop_size is None
    extract(model, videos, tmp_path / "out")
    ours = np.load(tmp_path / "out" / "edit_list_cut.npz")["features"]
    reference = open_clips_own_features(
        tiny_named_arch,
        video,
        pretrained=str(weights),
        **{f"image_{key}": value for key, value in SIGLIP_RECIPE.items()},
    )
    assert cosine(ours, reference).min() >= 0.999


def test_a_bare_file_is_refused_when_the_tags_disagree_on_the_recipe(
    tiny_named_arch: str, tmp_path: Path
):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"never read")
    with pytest.raises(VfeError, match=r"--model.recipe \(one of siglip_like, openai_like\)"):
        OpenCLIPBackbone(arch=tiny_named_arch, weights=str(weights)).configure_model()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"arch": "ViT-B-32", "weights": "openai"}, r"trained with QuickGELU.*ViT-B-32-quickgelu"),
        ({"arch": "ViT-L-14"}, r"has 12 pretrained tags; choose one with --model.weights"),
        ({"arch": "ViT-X-99"}, r"'ViT-X-99' is not an open_clip model"),
        ({"arch": "ViT-B-32", "weights": "nonsense"}, r"neither a pretrained tag of ViT-B-32"),
        ({"arch": "local-dir:/no/such/dir"}, r"has no open_clip_config.json"),
        ({"arch": "ViT-B-16-SigLIP", "weights": "webli", "recipe": "x"}, "contradicts"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(VfeError, match=message):
        OpenCLIPBackbone(**options).configure_model()


def test_random_weights_of_a_named_arch_use_its_tags_recipe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = OpenCLIPBackbone(arch="ViT-B-16-SigLIP", weights="random")
        spec = model.input_spec
    assert spec.resize_mode is ResizeMode.SQUASH and spec.sample_size == (224, 224)
    assert spec.mean == (0.5, 0.5, 0.5)
    assert model.feature_dim == 768  # measured: the timm tower keeps no output_dim
