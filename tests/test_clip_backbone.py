import hashlib
import urllib.error
import urllib.request
import warnings
from fractions import Fraction
from pathlib import Path

import clip
import numpy as np
import pytest
import torch
from clip.model import CLIP, convert_weights
from conftest import cosine, extract, reference_decode, run_vfe
from PIL import Image

from vfe.backbones import openai_clip
from vfe.backbones.openai_clip import CLIP_ARCHS, CLIPBackbone
from vfe.bench.synthetic import write_video
from vfe.errors import VfeError


def reference_clip_features(weights: Path, video: Path, clip_len: float) -> np.ndarray:
    """CLIP's own pipeline on what a sequential FFmpeg decode presents: PIL frames ->
    `clip.load`'s preprocess -> `encode_image`, averaged over each contract window's frames."""
    model, preprocess = clip.load(str(weights), device="cpu", jit=False)
    decoded = reference_decode(video)
    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in decoded.frames]
    with torch.no_grad():
        per_frame = model.encode_image(torch.stack([preprocess(image) for image in images]))
    clips = decoded.clip_frames(Fraction(str(clip_len)))
    return np.stack([per_frame[frames].mean(0).numpy() for frames in clips])


def test_features_match_clips_own_pipeline(video_dir: Path, tiny_clip_file: Path, tmp_path: Path):
    model = CLIPBackbone(arch="custom", weights=str(tiny_clip_file))
    extract(model, video_dir, tmp_path, batch_size=16)  # clips straddle batches
    ours = np.load(tmp_path / "moving.npz")["features"]
    reference = reference_clip_features(tiny_clip_file, video_dir / "moving.mp4", 2.0)
    assert ours.shape == reference.shape == (2, 32)
    assert cosine(ours, reference).min() >= 0.999


def test_vit_b32_file_gives_512_d_features_matching_clip(tmp_path: Path):
    torch.manual_seed(0)
    network = CLIP(*CLIP_ARCHS["ViT-B/32"])
    convert_weights(network)  # fp16, as OpenAI ships it
    weights = tmp_path / "vit_b32_random.pt"
    torch.save(network.state_dict(), weights)
    del network
    videos = tmp_path / "videos"
    write_video(videos / "v.mp4", num_frames=12, fps=10, height=120, width=160, seed=3)
    model = CLIPBackbone(arch="ViT-B/32", weights=str(weights))
    assert model.feature_dim == 512 and model.input_spec.crop_size == 224
    extract(model, videos, tmp_path / "out")
    ours = np.load(tmp_path / "out" / "v.npz")["features"]
    reference = reference_clip_features(weights, videos / "v.mp4", 2.0)
    assert ours.shape == (1, 512)
    assert cosine(ours, reference).min() >= 0.999


def test_random_weights_build_the_named_architecture(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # vfe's own line, not a Python warning
        model = CLIPBackbone(arch="RN50", weights="random")
        model.configure_model()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("vfe: warning: CLIP RN50: using RANDOM weights"), line
    assert model.feature_dim == 1024
    assert openai_clip.visual_signature(model.visual) == CLIP_ARCHS["RN50"][:5]


def test_file_of_another_architecture_is_a_clear_error(tiny_clip_file: Path):
    with pytest.raises(VfeError, match=r"not ViT-B/32 .*--model.arch"):
        CLIPBackbone(arch="ViT-B/32", weights=str(tiny_clip_file)).configure_model()


@pytest.mark.parametrize(
    ("arch", "weights", "message"),
    [
        ("ViT-X/99", "random", "not a CLIP architecture; choose one of RN50"),
        ("ViT-B/32", "/no/such/file.pt", "no such file"),
        ("custom", None, "takes the architecture from a --model.weights file"),
    ],
)
def test_bad_arch_or_weights_are_clear_errors(arch, weights, message):
    with pytest.raises(VfeError, match=message):
        CLIPBackbone(arch=arch, weights=weights).configure_model()


def test_file_that_is_not_a_clip_checkpoint(tmp_path: Path):
    not_clip = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2)}, not_clip)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    for path in (not_clip, garbage):
        with pytest.raises(VfeError, match="is not a CLIP checkpoint"):
            CLIPBackbone(arch="custom", weights=str(path)).configure_model()


def test_official_weights_come_from_clips_cache(tiny_clip_file: Path, monkeypatch):
    asked = []

    def cached_download(url: str, root: str) -> str:
        asked.append((url, root))
        return str(tiny_clip_file)

    monkeypatch.setattr(clip.clip, "_download", cached_download)
    model = CLIPBackbone(arch="ViT-B/32")
    assert model.feature_dim == 32  # the file the cache handed over
    assert asked and asked[0][0].endswith("ViT-B-32.pt")
    assert asked[0][1] == str(Path("~/.cache/clip").expanduser())


def test_official_weights_offline_says_how_to_run_offline(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(VfeError) as error:
        CLIPBackbone(arch="ViT-B/16").configure_model()
    message = str(error.value)
    assert "ViT-B-16.pt" in message and ".cache/clip" in message and "--model.weights" in message


def test_a_foreign_file_in_clips_cache_is_named_as_the_cause(tmp_path: Path, monkeypatch):
    """clip.load would only warn about the checksum and try to download again (failing
    offline with "put ViT-B-16.pt in ..."): the cause must be the message."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cached = tmp_path / ".cache" / "clip" / "ViT-B-16.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a checkpoint of someone's own")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    for step in ("prepare_data", "configure_model"):
        with pytest.raises(VfeError) as error:
            getattr(CLIPBackbone(arch="ViT-B/16"), step)()
        message = str(error.value)
        assert f"{cached} is not the official OpenAI CLIP ViT-B/16 file" in message
        assert hashlib.sha256(cached.read_bytes()).hexdigest() in message
        assert "--model.weights FILE" in message


@pytest.mark.parametrize("convert_on", ["workers", "model"])
def test_clip_run_over_real_world_files_matches_clips_pipeline_on_ffmpeg_frames(
    real_world_videos: dict[str, Path], references, tiny_clip_file: Path, tmp_path: Path,
    convert_on: str,
):  # fmt: skip
    """The frame-exact issue's acceptance: one CLI run over the awkward files writes every one,
    each clip equal to OpenAI CLIP's own pipeline over the frames FFmpeg presents in the
    clip's window, with the contract's timestamps and fps; with the colour conversion in the
    workers (swscale) or on the model's device (`--data.convert_on model`)."""
    folder = next(iter(real_world_videos.values())).parent
    options = [
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", str(folder), "--output_dir", "out", "--batch_size", "16",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    result = run_vfe(*options, "--data.convert_on", convert_on, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"written {len(real_world_videos)}, skipped 0, failed 0" in result.stdout + result.stderr
    for name, path in real_world_videos.items():
        saved = np.load((tmp_path / "out" / name).with_suffix(".npz"))
        reference = reference_clip_features(tiny_clip_file, path, 2.0)
        assert saved["features"].shape == reference.shape, name
        assert cosine(saved["features"], reference).min() >= 0.999, name
        decoded = references[name]
        windows = [
            [float(2 * i), float(min(2 * i + 2, decoded.duration))] for i in range(len(reference))
        ]
        np.testing.assert_array_equal(saved["timestamps"], windows, err_msg=name)
        assert float(saved["fps"]) == float(len(decoded.frames) / decoded.duration), name
        assert f'"convert_on": "{convert_on}"' in str(saved["provenance"]), name
    if convert_on == "model":  # not resumed by a run converting in the workers
        again = run_vfe(*options, cwd=tmp_path)
        assert again.returncode != 0
        assert "convert_on: 'model' (file) -> 'workers' (now)" in again.stderr


def test_official_weights_are_fetched_by_prepare_data_once(tmp_path: Path, monkeypatch):
    """Lightning runs `prepare_data` on one process per node before any loads the weights."""
    monkeypatch.setattr("vfe.backbones.openai_clip.CLIP_CACHE", tmp_path)
    digest = hashlib.sha256(b"weights").hexdigest()  # the cached file is checked against it
    monkeypatch.setitem(clip.clip._MODELS, "ViT-B/32", f"https://example/{digest}/ViT-B-32.pt")
    fetched = []

    def fake_download(url, destination, hash_prefix=None, progress=True):
        fetched.append((url, hash_prefix))
        Path(destination).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    for _ in range(2):
        CLIPBackbone(arch="ViT-B/32").prepare_data()
    CLIPBackbone(arch="ViT-B/32", weights="random").prepare_data()
    ((url, sha256),) = fetched
    assert url.endswith("/ViT-B-32.pt") and len(sha256) == 64 and sha256 in url
    assert (tmp_path / "ViT-B-32.pt").read_bytes() == b"weights"
