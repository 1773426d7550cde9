"""The recipes of docs/released-features.md for Moment-DETR-style models work as written: its
annotation filter, `vfe text` on an annotation file, and UniVTG's text cache (`--prefix ''`
then `vfe pack`)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import extract

from vfe.backbones.openai_clip import CLIPBackbone

REPO = Path(__file__).resolve().parent.parent
ANNOTATION = {
    "qid": 7803,
    "query": "Man in gray top walks from outside to inside.",
    "duration": 150,
    "vid": "RoripwjYFp8_360.0_510.0",
    "relevant_clip_ids": [13, 14],
    "relevant_windows": [[26, 30]],
}


def readme_block_after(marker: str, language: str) -> str:
    text = (REPO / "docs" / "released-features.md").read_text()
    start = text.index(marker)
    return re.search(rf"```{language}\n(.*?)```", text[start:], re.S).group(1)


def test_the_annotation_filter_keeps_videos_with_both_features(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [{**ANNOTATION, "vid": vid, "qid": n} for n, vid in enumerate(["a", "b", "c"])]
    Path("highlight_train_release.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for folder, vids in (("slowfast_features", "ab"), ("clip_features", "bc")):
        (tmp_path / "features" / folder).mkdir(parents=True)
        for vid in vids:
            np.savez(tmp_path / "features" / folder / f"{vid}.npz", features=np.zeros((1, 1)))
    exec(readme_block_after("`vfe info features/mine/clip` lists them", "python"), {})
    kept = [json.loads(x)["vid"] for x in Path("train_available.jsonl").read_text().splitlines()]
    assert kept == ["b"]


@pytest.mark.slow  # a shipped config / a whole recipe: the full suite
def test_univtg_text_cache_from_an_annotation_file(
    tmp_path: Path, video_dir: Path, text_clip_file: Path
):
    features = tmp_path / "clip"
    extract(CLIPBackbone(arch="custom", weights=str(text_clip_file)), video_dir, features)
    annotations = tmp_path / "train.jsonl"
    annotations.write_text(json.dumps(ANNOTATION) + "\n")
    txt_clip = tmp_path / "txt_clip"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for args in (
        ["text", "--like", str(features), "--queries", str(annotations), "--output_dir",
         str(txt_clip), "--prefix", ""],
        ["pack", str(txt_clip), str(tmp_path / "txt_clip.hdf5"), "--key", "last_hidden_state"],
    ):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "vfe", *args], capture_output=True, text=True, env=env
        )
        assert result.returncode == 0, result.stderr
    with np.load(txt_clip / "7803.npz") as written, h5py.File(tmp_path / "txt_clip.hdf5") as f:
        # UniVTG: self.txt_cache[qid] = f[str(qid)][:]
        np.testing.assert_array_equal(f[str(ANNOTATION["qid"])][:], written["last_hidden_state"])
