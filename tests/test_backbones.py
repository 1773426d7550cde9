"""What every backbone family shares: a multi-backbone run equals single runs, the shipped
configs parse, and a missing extra is a one-line error naming it."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import extract, run_vfe

from vfe.backbones.multi import MultiBackbone
from vfe.backbones.openclip import OpenCLIPBackbone
from vfe.backbones.pytorchvideo_zoo import PyTorchVideoBackbone
from vfe.backbones.timm_image import TimmBackbone
from vfe.backbones.videomae import VideoMAEBackbone
from vfe.errors import VfeError

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def four_families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Per backbone name, options that load small random networks through the real paths."""
    pytest.importorskip("open_clip")
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    import timm
    from pytorchvideo.models import hub
    from test_open_clip_backbone import SIGLIP_RECIPE, write_local_dir
    from test_videomae_backbone import write_checkpoint

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(timm.create_model("convnext_atto").state_dict(), folder / "convnext.pth")
    torch.save({"model_state": hub.x3d_xs().state_dict()}, folder / "x3d.pyth")
    return {
        "open_clip": {"arch": f"local-dir:{write_local_dir(folder / 'siglip', SIGLIP_RECIPE)}"},
        "timm": {"arch": "convnext_atto", "weights": str(folder / "convnext.pth")},
        "pytorchvideo": {"arch": "x3d_xs", "weights": str(folder / "x3d.pyth")},
        "videomae": {
            "arch": str(write_checkpoint(folder / "videomae", "VideoMAEForVideoClassification", 2))
        },
    }


BACKBONES = {
    "open_clip": OpenCLIPBackbone,
    "timm": TimmBackbone,
    "pytorchvideo": PyTorchVideoBackbone,
    "videomae": VideoMAEBackbone,
}


def test_one_decode_for_four_families_equals_single_runs(
    four_families: dict[str, dict], video_dir: Path, tmp_path: Path
):
    extract(MultiBackbone(list(four_families), four_families), video_dir, tmp_path / "multi")
    for name, options in four_families.items():
        extract(BACKBONES[name](**options), video_dir, tmp_path / name)
        for relative in ("moving.npz", "nested/short.npz"):
            single = np.load(tmp_path / name / relative)
            multi = np.load(tmp_path / "multi" / name / relative)
            np.testing.assert_allclose(multi["features"], single["features"], rtol=1e-5)
            np.testing.assert_array_equal(multi["timestamps"], single["timestamps"])


@pytest.mark.slow  # a shipped config / a whole recipe: the full suite
def test_the_cli_runs_each_shipped_config(
    four_families: dict[str, dict], video_dir: Path, tmp_path
):
    """The README's form: `--config configs/NAME.yaml` with the network options overridden."""
    for name, options in four_families.items():
        overrides = [f"--model.{key}={value}" for key, value in options.items()]
        if name == "open_clip":
            overrides.append("--model.weights=null")
        result = run_vfe(
            "--config", str(CONFIGS / f"{name}.yaml"), *overrides, "--input_dir", str(video_dir),
            "--output_dir", name, "--trainer.enable_progress_bar", "false", cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, (name, result.stderr)
        assert (tmp_path / name / "nested" / "short.npz").is_file()


@pytest.mark.parametrize(
    ("backbone", "options", "module", "extra"),
    [
        (OpenCLIPBackbone, {}, "open_clip", "open_clip"),
        (TimmBackbone, {}, "timm", "timm"),
        (VideoMAEBackbone, {"weights": "random"}, "transformers", "transformers"),
    ],
)
def test_a_missing_extra_names_the_install_command(backbone, options, module, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(
        VfeError, match=rf"needs the '{extra}' extra.*pip install -e '\.\[{extra}\]'"
    ):
        backbone(**options).configure_model()
