"""`vfe text`: query features from the model and weights a features folder was made with."""

import json
import subprocess
from pathlib import Path

import clip
import numpy as np
import pytest
import torch
from conftest import extract, run_in_process

from vfe.backbones.openai_clip import CLIPBackbone
from vfe.backbones.slowfast import SlowFastBackbone
from vfe.errors import VfeError
from vfe.text.command import build_text_tower, folder_model, read_queries

QUERIES = ["a man rides a bike down a hill", "two dogs play", "x"]


@pytest.fixture(scope="module")
def clip_features(text_clip_file: Path, video_dir: Path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("clip_features")
    extract(CLIPBackbone(arch="custom", weights=str(text_clip_file)), video_dir, output)
    return output


def vfe_text(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_in_process(["text", *args], cwd)


def test_a_relative_weights_path_is_recorded_absolute(
    text_clip_file, video_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(text_clip_file.parent)
    extract(CLIPBackbone(arch="custom", weights=text_clip_file.name), video_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    options = folder_model(tmp_path)["options"]
    assert options["weights"] == str(text_clip_file.resolve())
    build_text_tower(folder_model(tmp_path))  # found from another folder


def test_query_files_hold_clips_token_states_and_encode_text(
    clip_features: Path, text_clip_file: Path, tmp_path: Path
):
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"qid": 10 + i, "query": q}) + "\n" for i, q in
                               enumerate(QUERIES)))  # fmt: skip
    result = vfe_text("--like", str(clip_features), "--queries", str(queries), "--output_dir",
                      "txt", "--batch_size", "2", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # vfe's own lines only
    model, _ = clip.load(str(text_clip_file), device="cpu", jit=False)
    tokens = clip.tokenize(QUERIES, truncate=True)
    with torch.no_grad():
        pooled = model.encode_text(tokens)
        # The text transformer's token states, as CLIP's encode_text computes them.
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.ln_final(model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
    for i, query in enumerate(QUERIES):
        saved = np.load(tmp_path / "txt" / f"qid{10 + i}.npz")
        length = int((tokens[i] != 0).sum())  # start, words, end
        assert saved["last_hidden_state"].shape == (length, 64)
        np.testing.assert_allclose(saved["last_hidden_state"], x[i, :length], atol=1e-5)
        np.testing.assert_allclose(saved["pooler_output"], pooled[i], atol=1e-5)
        provenance = json.loads(str(saved["provenance"]))
        assert provenance["query"] == query and provenance["arch"] == "custom"


def test_open_clip_queries_equal_its_encode_text(video_dir: Path, tmp_path: Path):
    open_clip = pytest.importorskip("open_clip")
    from test_open_clip_backbone import write_local_dir

    from vfe.backbones.openclip import OpenCLIPBackbone

    folder = write_local_dir(tmp_path / "model", {})
    backbone = OpenCLIPBackbone(arch=f"local-dir:{folder}")
    extract(backbone, video_dir, tmp_path / "features")
    tower = build_text_tower(folder_model(tmp_path / "features"))
    states, pooled = tower.encode(QUERIES)
    model = open_clip.create_model(f"local-dir:{folder}").eval()
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(QUERIES)
    with torch.no_grad():
        np.testing.assert_allclose(pooled, model.encode_text(tokens), atol=1e-5)
    assert [len(s) for s in states] == (tokens != 0).sum(1).tolist()


def test_plain_text_queries_are_numbered_from_zero(tmp_path: Path):
    path = tmp_path / "q.txt"
    path.write_text("first query\n\nsecond query\n")
    assert read_queries(path) == [("0", "first query"), ("2", "second query")]
    repeated = tmp_path / "r.jsonl"
    repeated.write_text('{"qid": 3, "query": "a"}\n{"qid": 3, "query": "b"}\n')
    with pytest.raises(VfeError, match="repeats qid 3"):
        read_queries(repeated)


def test_mismatches_are_refused(
    clip_features: Path, text_clip_file: Path, video_dir: Path, tmp_path: Path
):
    # Weights that changed since the features were made.
    model = folder_model(clip_features)
    changed = tmp_path / "changed.pt"
    state = torch.load(text_clip_file)
    state["ln_final.weight"] = state["ln_final.weight"] + 1
    torch.save(state, changed)
    with pytest.raises(VfeError, match="are not those the features were made with"):
        build_text_tower({**model, "options": {**model["options"], "weights": str(changed)}})
    # A video backbone has no text side.
    slowfast = tmp_path / "slowfast"
    extract(SlowFastBackbone(weights="random"), video_dir, slowfast, clip_len=4.0)
    with pytest.raises(VfeError, match="random weights"):
        build_text_tower(folder_model(slowfast))
    # A folder holding two models' files.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.npz").write_bytes((clip_features / "moving.npz").read_bytes())
    (mixed / "b.npz").write_bytes((slowfast / "moving.npz").read_bytes())
    with pytest.raises(VfeError, match="mixes models"):
        folder_model(mixed)


def test_a_folder_of_video_features_without_text_side(slowfast_pyth_file, video_dir, tmp_path):
    extract(SlowFastBackbone(weights=str(slowfast_pyth_file)), video_dir, tmp_path, clip_len=4.0)
    with pytest.raises(VfeError, match="slowfast has no text encoder"):
        build_text_tower(folder_model(tmp_path))


def test_vfe_info_ends_its_output_with_a_newline(clip_features: Path, tmp_path: Path):
    from conftest import run_in_process

    for target in (clip_features / "moving.npz", clip_features):
        result = run_in_process(["info", str(target)], tmp_path)
        assert result.returncode == 0 and result.stdout.endswith("\n"), result.stdout[-80:]
