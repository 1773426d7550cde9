"""Several backbones from one decode: `--model clip,slowfast`."""

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import yaml
from conftest import cosine, extract, run_in_process, run_vfe
from torchvision.transforms import InterpolationMode

from vfe.argv import rewrite_model_names
from vfe.backbones.base import Backbone
from vfe.backbones.multi import MultiBackbone
from vfe.bench.synthetic import write_video
from vfe.data.input_spec import InputSpec
from vfe.errors import VfeError
from vfe.output.failures import read_failures

ARRAYS = ("features", "timestamps", "fps", "clip_length")


class MeanColourBackbone(Backbone):
    """A test-only third backbone: 4 frames per clip stacked, feature = mean colour."""

    name: ClassVar[str] = "mean_colour"

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(
            4, 12, 8, InterpolationMode.BILINEAR, False, (0.0,) * 3, (1.0,) * 3, 5, True
        )

    @property
    def feature_dim(self) -> int:
        return 3

    def weights_record(self) -> dict[str, str]:
        return {"arch": "mean", "weights": "none", "weights_sha256": "none"}

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        return samples.mean(dim=(2, 3, 4)) * self.scale


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    write_video(folder / "a.mp4", num_frames=60, fps=25, seed=11)
    write_video(folder / "sub" / "b.mp4", num_frames=30, fps=25, seed=12)
    return folder


def model_args(tiny_clip_file: Path, slowfast_pyth_file: Path) -> list[str]:
    return [
        "--model.clip.arch", "custom", "--model.clip.weights", str(tiny_clip_file),
        "--model.slowfast.weights", str(slowfast_pyth_file),
    ]  # fmt: skip


def test_one_run_writes_what_two_single_runs_write(
    two_videos: Path, tiny_clip_file: Path, slowfast_pyth_file: Path, tmp_path: Path
):
    common = ["--input_dir", str(two_videos), "--trainer.enable_progress_bar", "false"]
    both = run_vfe(
        "--model", "clip,slowfast", *model_args(tiny_clip_file, slowfast_pyth_file),
        "--output_dir", "both", *common, cwd=tmp_path,
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    for name, weights in (("clip", tiny_clip_file), ("slowfast", slowfast_pyth_file)):
        arch = ["--model.arch", "custom"] if name == "clip" else []
        single = run_vfe(
            "--model", name, *arch, "--model.weights", str(weights),
            "--output_dir", f"only_{name}", *common, cwd=tmp_path,
        )  # fmt: skip
        assert single.returncode == 0, single.stderr
        for relative in ("a.npz", "sub/b.npz"):
            together = np.load(tmp_path / "both" / name / relative)
            alone = np.load(tmp_path / f"only_{name}" / relative)
            for key in ARRAYS:
                assert together[key].tobytes() == alone[key].tobytes(), (name, relative, key)
            assert json.loads(str(together["provenance"]))["model"].endswith(
                "CLIPBackbone" if name == "clip" else "SlowFastBackbone"
            )
    assert "clip: written 2, skipped 0, failed 0, clips 3" in both.stderr
    assert "slowfast: written 2, skipped 0, failed 0, clips 3" in both.stderr


def test_a_video_done_for_one_backbone_is_redone_only_for_the_other(
    two_videos: Path, tiny_clip_file: Path, slowfast_pyth_file: Path, tmp_path: Path
):
    args = [
        "--model", "clip,slowfast", *model_args(tiny_clip_file, slowfast_pyth_file),
        "--input_dir", str(two_videos), "--output_dir", "out",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    assert run_vfe(*args, cwd=tmp_path).returncode == 0
    out = tmp_path / "out"
    (out / "slowfast" / "a.npz").unlink()
    kept = {path: path.stat().st_mtime_ns for path in out.rglob("*.npz")}
    again = run_vfe(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (
        "clip: 2 videos under" in again.stderr and "2 already done (skipped), 0 to" in again.stderr
    )
    assert "slowfast: 2 videos under" in again.stderr
    assert "1 already done (skipped), 1 to extract" in again.stderr
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items())
    assert np.load(out / "slowfast" / "a.npz")["features"].shape == (2, 2304)


def test_a_third_backbone_needs_no_data_or_writer_change(
    two_videos: Path, tiny_clip_file: Path, tmp_path: Path
):
    model = MultiBackbone(
        ["clip", "test_multi.MeanColourBackbone"],
        {"clip": {"arch": "custom", "weights": str(tiny_clip_file), "batch_size": 7}},
    )
    extract(model, two_videos, tmp_path / "out", num_workers=2)
    clip, colour = (np.load(tmp_path / "out" / name / "a.npz") for name in ("clip", "mean_colour"))
    assert clip["features"].shape == (2, 32) and colour["features"].shape == (2, 3)
    np.testing.assert_array_equal(colour["timestamps"], clip["timestamps"])
    assert colour["features"].min() > 0  # pixel means of real frames
    alone = tmp_path / "alone"
    extract(MeanColourBackbone(), two_videos, alone, num_workers=0)
    for key in ARRAYS:
        assert np.load(alone / "a.npz")[key].tobytes() == colour[key].tobytes()


def test_a_bad_video_is_reported_once_with_the_backbones_affected(
    two_videos: Path, tiny_clip_file: Path, tmp_path: Path, capsys
):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.mp4").write_bytes((two_videos / "a.mp4").read_bytes())
    (folder / "broken.mp4").write_text("not a video")
    model = MultiBackbone(
        ["clip", "test_multi.MeanColourBackbone"],
        {"clip": {"arch": "custom", "weights": str(tiny_clip_file)}},
    )
    writer = extract(model, folder, tmp_path / "out", num_workers=2)
    assert writer.total_failed == 1
    assert capsys.readouterr().err.count("broken.mp4 (clip, mean_colour): open:") == 1
    for name in ("clip", "mean_colour"):
        (record,) = read_failures(tmp_path / "out" / name / "failures.jsonl").records
        assert record["models"] == ["clip", "mean_colour"]
        assert (tmp_path / "out" / name / "a.npz").exists()
    # `vfe info` on the run's root: one report per backbone folder, each with its failure.
    info = run_in_process(["info", "out", "--json"], tmp_path)
    assert info.returncode == 0, info.stderr
    reports = json.loads(info.stdout)["backbones"]
    assert sorted(reports) == ["clip", "mean_colour"]
    for report in reports.values():
        assert report["files"] == 1
        assert [r["relative_path"] for r in report["failed_videos"]] == ["broken.mp4"]
        assert all(len(values) == 1 for values in report["settings"].values())  # not MIXED
    text = run_in_process(["info", "out"], tmp_path).stdout
    assert "2 backbone folders" in text and "MIXED" not in text


def test_clip_frames_per_clip_is_an_option_recorded_in_provenance(
    two_videos: Path, tiny_clip_file: Path, tmp_path: Path
):
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--model.frames_per_clip", "4", "--input_dir", str(two_videos), "--output_dir", "out",
        "--trainer.enable_progress_bar", "false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = np.load(tmp_path / "out" / "a.npz")
    assert json.loads(str(written["provenance"]))["preprocessing"]["frames_per_clip"] == 4
    assert written["features"].shape == (2, 32)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--model", "clip,slowfast"],
            ["--model=vfe.backbones.multi.MultiBackbone", '--model.models=["clip", "slowfast"]'],
        ),
        (
            ["--model.slowfast.batch_size", "4", "--model=clip,slowfast", "--model.clip.arch=RN50"],
            [
                "--model=vfe.backbones.multi.MultiBackbone",
                '--model.models=["clip", "slowfast"]',
                '--model.options={"slowfast": {"batch_size": 4}, "clip": {"arch": "RN50"}}',
            ],
        ),
    ],
)
def test_several_model_names_on_the_command_line(argv, expected):
    assert rewrite_model_names(argv) == expected


@pytest.mark.parametrize(
    ("models", "options", "message"),
    [
        (["clip", "slowfast"], {"clip": {"colour": 1}}, "--model.clip.colour is not an option"),
        (["clip"], {"slowfast": {"weights": "x"}}, "--model.slowfast.* names a backbone"),
        (["clip", "clip"], {}, "names clip twice"),
        (["clip", "nonsense"], {}, "unknown model 'nonsense'"),
        (["clip", "slowfast"], {"clip": {"batch_size": 0}}, "batch_size must be a positive"),
    ],
)
def test_bad_multi_model_options_are_clear_errors(models, options, message):
    model = MultiBackbone(models, options)  # records only: errors come on first use
    with pytest.raises(VfeError, match=message):
        model.members()


def test_one_batch_size_for_several_backbones_is_refused(two_videos: Path, tmp_path: Path):
    result = run_vfe(
        "--model", "clip,slowfast", "--model.clip.weights", "random",
        "--model.slowfast.weights", "random", "--batch_size", "4",
        "--input_dir", str(two_videos), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--batch_size 4 is for one backbone" in result.stderr


def test_the_clip_slowfast_config_names_both(tmp_path: Path):
    config = Path(__file__).parents[1] / "configs" / "clip_slowfast.yaml"
    result = run_vfe("--config", str(config), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "vfe.backbones.multi.MultiBackbone" in result.stdout
    assert "- clip\n    - slowfast" in result.stdout


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_mixed_precision_runs_every_backbone_as_alone(
    precision, two_videos: Path, tiny_clip_file: Path, tmp_path: Path
):
    features = {}
    for run in ("32-true", precision):
        model = MultiBackbone(
            ["clip", "test_multi.MeanColourBackbone"],
            {"clip": {"arch": "custom", "weights": str(tiny_clip_file)}},
        )
        extract(model, two_videos, tmp_path / run, precision=run)
        features[run] = np.load(tmp_path / run / "clip" / "a.npz")["features"]
    assert features[precision].dtype == np.float32
    assert not np.array_equal(features[precision], features["32-true"])  # bf16 did run
    assert cosine(features[precision], features["32-true"]).min() >= 0.99


def test_a_bad_backbone_option_is_one_line_on_the_command_line(two_videos: Path, tmp_path):
    result = run_vfe(
        "--model", "clip,slowfast", "--model.clip.colour", "1", "--input_dir", str(two_videos),
        "--output_dir", "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "vfe: error: --model.clip.colour is not an option of clip" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a shipped config / a whole recipe: the full suite
def test_the_shipped_two_backbone_config_takes_per_backbone_flags(
    two_videos: Path, tiny_clip_file: Path, slowfast_pyth_file: Path, tmp_path: Path
):
    config = Path(__file__).parents[1] / "configs" / "clip_slowfast.yaml"
    result = run_vfe(
        "--config", str(config), "--model.clip.arch", "custom",
        "--model.clip.weights", str(tiny_clip_file), "--model.slowfast.weights",
        str(slowfast_pyth_file), "--model.slowfast.batch_size=2", "--input_dir", str(two_videos),
        "--output_dir", "out", "--trainer.enable_progress_bar", "false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "out" / "clip" / "a.npz")["features"].shape[1] == 32
    assert np.load(tmp_path / "out" / "slowfast" / "a.npz")["features"].shape[1] == 2304


@pytest.mark.parametrize(
    "model_yaml",
    [
        "model: [clip, slowfast]",
        "model: clip,slowfast",
        "model:\n  clip: {arch: RN50}\n  slowfast: null",
        "model:\n  class_path: vfe.backbones.multi.MultiBackbone\n"
        "  init_args: {models: [clip, slowfast]}",
    ],
    ids=["list", "comma", "per-backbone", "class path"],
)
def test_every_way_of_naming_models_in_yaml_takes_per_backbone_flags(model_yaml, tmp_path: Path):
    (tmp_path / "in").mkdir()
    config = tmp_path / "two.yaml"
    config.write_text(model_yaml + "\n")
    result = run_vfe(
        "--config", str(config), "--model.clip.weights", "mine.pt", "--model.slowfast.weights",
        "sf.pyth", "--input_dir", "in", "--print_config", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    options = yaml.safe_load(result.stdout)["model"]["init_args"]["options"]
    assert options["clip"]["weights"] == "mine.pt" and options["slowfast"]["weights"] == "sf.pyth"


@pytest.mark.slow
def test_progress_counts_each_backbones_clips_and_nothing_to_do_shows_no_bar(
    two_videos: Path, tiny_clip_file: Path, slowfast_pyth_file: Path, tmp_path: Path
):
    args = [
        "--model", "clip,slowfast", *model_args(tiny_clip_file, slowfast_pyth_file),
        "--input_dir", str(two_videos),
        "--output_dir", "out", "--trainer.callbacks", "vfe.output.progress.VideoProgressBar",
        "--trainer.callbacks.log_interval_seconds", "0",
    ]  # fmt: skip
    result = run_vfe(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Extracting:")]
    assert lines[-1].startswith("Extracting: 100%") and "videos=2/2" in lines[-1]
    assert "clips=clip:3 slowfast:3" in lines[-1], lines[-1]  # a: 2 clips, b: 1
    nothing = run_vfe(*args, cwd=tmp_path)  # everything is done
    assert nothing.returncode == 0, nothing.stderr
    assert "Extracting" not in nothing.stderr + nothing.stdout
    assert "0 to extract" in nothing.stderr


def test_a_members_error_names_its_own_flag(video_dir: Path, tmp_path: Path, monkeypatch):
    """Offline, with several backbones, the way out is --model.clip.weights (--model.weights
    is refused there); a member's bad choice is one line naming its flag."""
    import urllib.error
    import urllib.request

    monkeypatch.setenv("HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    common = ["--input_dir", str(video_dir), "--data.num_workers", "0", "--device", "cpu"]
    result = run_vfe(
        "--model", "clip,slowfast", "--model.slowfast.weights", "random", *common, cwd=tmp_path
    )
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("vfe: error:")]
    assert "pass --model.clip.weights /path/to/checkpoint" in line, result.stderr
    result = run_vfe(
        "--model", "clip,slowfast", "--model.slowfast.recipe", "heros", *common, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "vfe: error: --model.slowfast.recipe: expected one of vfe, hero, got heros" in (
        result.stderr
    )
