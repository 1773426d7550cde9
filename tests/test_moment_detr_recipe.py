"""configs/moment_detr.yaml and configs/lighthouse.yaml run HERO's recipe for both backbones
(whose rows and features tests/test_hero_recipe.py checks against HERO's pipeline): HERO's row
counts, float16 files, each backbone in its own folder, the recipe in provenance."""

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_vfe
from pyslowfast_files import caffe2_blobs, python2_pickle, random_slowfast_state
from test_hero_recipe import ffmpeg_frames

from vfe.bench.synthetic import write_video
from vfe.planning.provenance import read_provenance

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_moment_detr_config_runs_heros_recipe(tmp_path: Path, tiny_clip_file: Path):
    config = "moment_detr"
    videos = tmp_path / "videos"
    lengths = {"three.mp4": 90, "four_and_a_half.mp4": 135}  # frames at 30 fps
    for name, frames in lengths.items():
        write_video(videos / name, frames, fps=30, height=48, width=64, seed=frames)
    weights = tmp_path / "SLOWFAST_8x8_R50.pkl"
    weights.write_bytes(python2_pickle(caffe2_blobs(random_slowfast_state())))
    out = tmp_path / "features"
    result = run_vfe(
        "--config", str(REPO / "configs" / f"{config}.yaml"),
        "--input_dir", str(videos), "--output_dir", str(out),
        "--model.clip.weights", str(tiny_clip_file), "--model.clip.arch", "custom",
        "--model.slowfast.weights", str(weights),
        "--model.slowfast.batch_size", "5", "--data.num_workers", "0", "--device", "cpu",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name, frames in lengths.items():
        npz = Path(name).with_suffix(".npz")
        rows = {}
        for backbone in ("clip", "slowfast"):
            with np.load(out / backbone / npz) as file:
                assert file["features"].dtype == np.float16
                rows[backbone] = len(file["features"])
            record = read_provenance(out / backbone / npz)
            assert record["options"]["recipe"] == "hero"
            assert record["output_dtype"] == "float16"
        seconds = frames / 30
        assert rows["slowfast"] == math.ceil(seconds / 2)  # HERO's: 2 for 3 s, 3 for 4.5 s
        assert rows["clip"] == len(ffmpeg_frames(videos / name, "0.5", 32))  # fps=1/2's frames


def test_the_lighthouse_config_is_heros_recipe_in_lighthouses_layout(tmp_path: Path):
    """The same settings as configs/moment_detr.yaml (run above), in Lighthouse's flat layout."""
    import yaml

    configs = REPO / "configs"
    lighthouse = yaml.safe_load((configs / "lighthouse.yaml").read_text())
    moment_detr = yaml.safe_load((configs / "moment_detr.yaml").read_text())
    assert lighthouse["model"]["clip"] == moment_detr["model"]["clip"]
    assert lighthouse["model"]["slowfast"] == moment_detr["model"]["slowfast"]
    assert list(lighthouse["model"]) == ["clip", "slowfast"]  # Lighthouse's order
    assert (lighthouse["layout"], lighthouse["output_dtype"]) == ("flat", "float16")
    result = run_vfe("--config", str(configs / "lighthouse.yaml"), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["layout"] == "flat" and printed["output_dtype"] == "float16"


def test_the_lighthouse_pann_config_adds_pann_to_the_lighthouse_config(tmp_path: Path):
    """configs/lighthouse_pann.yaml: configs/lighthouse.yaml's settings plus PANN (the audio
    run itself: tests/test_audio.py)."""
    import yaml

    configs = REPO / "configs"
    lighthouse = yaml.safe_load((configs / "lighthouse.yaml").read_text())
    with_pann = yaml.safe_load((configs / "lighthouse_pann.yaml").read_text())
    assert list(with_pann["model"]) == ["clip", "slowfast", "pann"]
    assert {**with_pann, "model": None} == {**lighthouse, "model": None}
    for name in ("clip", "slowfast"):
        assert with_pann["model"][name] == lighthouse["model"][name]
    result = run_vfe("--config", str(configs / "lighthouse_pann.yaml"), "--print_config",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pann" in yaml.safe_load(result.stdout)["model"]["init_args"]["models"]
