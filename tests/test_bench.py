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
            sys.executable, "-m", "vfe", "bench", "--models", "clip", "--sets", "240p",
            "--seconds", "1", "--videos_dir", str(tmp_path / "videos"),
            "--output_json", "bench.json", "--output_png", "bench.png",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    (row,) = report["rows"]
    assert row["model"] == "clip" and row["set"] == "240p" and row["clips"] == 2
    for key in (
        "video_seconds_per_second", "clips_per_second", "decoded_frames_per_second",
        "peak_rss_mb", "decode_ceiling_video_seconds_per_second",
        "model_ceiling_video_seconds_per_second", "efficiency", "speedup_over_baseline",
    ):  # fmt: skip
        assert row[key] > 0, key
    assert set(row["stage_seconds"]) >= {
        "decode", "preprocess", "host_to_device", "model", "write", "waiting_for_data",
    }  # fmt: skip
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "efficiency" in result.stdout
