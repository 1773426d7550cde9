"""The benchmark command runs end to end and reports every figure (no timing assertions)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_command_writes_json_and_chart(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable, "-m", "vfe", "bench", "--models", "timm:convnext_atto",
            "--sets", "240p", "--seconds", "1", "--videos_dir", str(tmp_path / "videos"),
            "--output_json", "bench.json", "--output_png", "bench.png",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    (row,) = report["rows"]
    # The smallest model the bench builds (timm's ConvNeXt-atto): the run, not the model, is
    # what is tested here.
    assert row["model"] == "timm:convnext_atto" and row["set"] == "240p" and row["clips"] == 2
    for key in (
        "video_seconds_per_second", "clips_per_second", "decoded_frames_per_second",
        "peak_rss_mb", "decode_ceiling_video_seconds_per_second",
        "model_ceiling_video_seconds_per_second", "efficiency", "speedup_over_baseline",
    ):  # fmt: skip
        assert row[key] > 0, key
    assert set(row["stage_seconds"]) >= {
        "decode", "preprocess", "host_to_device", "model", "write", "waiting_for_data",
    }  # fmt: skip
    assert row["videos_planned"] == row["videos_written"] == 2 and row["problems"] == []
    assert row["videos_failed"] == row["videos_not_on_nvdec"] == 0
    assert row["steady_video_seconds_per_second"] > 0  # after the first batch
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "efficiency" in result.stdout


ROW = {"videos_planned": 4, "videos_written": 4, "videos_failed": 0, "videos_not_on_nvdec": 0}


@pytest.mark.parametrize(
    ("changes", "problems"),
    [
        ({}, []),
        ({"videos_written": 3, "videos_failed": 1}, ["3 of 4 videos written", "1 video(s) failed"]),
        ({"videos_not_on_nvdec": 2}, []),  # decoding on the CPU: NVDEC was not asked
        (
            {"videos_not_on_nvdec": 2, "decode_device": "cuda"},
            ["2 video(s) decoded in software, not NVDEC"],
        ),
    ],
)
def test_a_row_says_what_keeps_it_from_being_what_it_claims(changes, problems):
    from vfe.bench.command import row_problems

    assert row_problems({**ROW, "decode_device": "cpu", **changes}) == problems
