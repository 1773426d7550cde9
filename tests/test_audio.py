"""Audio backbones (`--model pann`): each clip's window of the video's audio, on the video
backbones' grid, against the recipe's own pipeline (Lighthouse's: `librosa.load(path,
sr=32000, mono=True)`, then panns_inference's CNN14 on each 2-s window)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cosine, extract, run_vfe

from vfe.backbones.pann import SAMPLE_RATE_HZ, PANNBackbone, load_cnn14

# Never `import panns_inference` here: its __init__ downloads AudioSet's label file.
if importlib.util.find_spec("panns_inference") is None:
    pytest.skip("needs the audio extra", allow_module_level=True)
librosa = pytest.importorskip("librosa")

# Two tones sweeping in opposite directions (left, right), so every window differs, over noise
# that fills every mel band: in bands with no energy the log-mel front end turns the codecs'
# and decoders' faint differences (an FFmpeg 5.1 command's 16-bit output against PyAV's float
# decode) into large ones, and plain tones gave cosines of 0.82-0.90 for lossy codecs.
SWEEPS = (
    "aevalsrc=0.5*sin(2*PI*(200+300*t)*t)+0.1*(random(0)*2-1)"
    "|0.3*sin(2*PI*(900-80*t)*t)+0.1*(random(1)*2-1):s={rate}:d=5.3"
)
# name -> audio encoder options, rate, channels, video encoder options
AUDIO_FILES = {
    "aac_48k_stereo.mp4": (["-c:a", "aac"], 48000, 2, ["-c:v", "libx264"]),
    "mp3_44k_mono.mkv": (["-c:a", "libmp3lame"], 44100, 1, ["-c:v", "libx264"]),
    "opus_48k_stereo.webm": (["-c:a", "libopus"], 48000, 2, ["-c:v", "libvpx"]),
    "pcm_44k_stereo.mkv": (["-c:a", "pcm_s16le"], 44100, 2, ["-c:v", "libx264"]),
}
LATE_SECONDS = 0.5  # "late_audio.mp4": its audio starts half a second after its first frame


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def audio_videos(tmp_path_factory: pytest.TempPathFactory, real_world_videos) -> Path:
    """5-s videos with audio in four containers and codecs, one whose audio starts late, and
    one without audio."""
    folder = tmp_path_factory.mktemp("audio")
    video = ["-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25"]
    for name, (audio_codec, rate, channels, video_codec) in AUDIO_FILES.items():
        audio = ["-f", "lavfi", "-i", SWEEPS.format(rate=rate)]
        _ffmpeg(*video, *audio, "-t", "5", *video_codec, "-pix_fmt", "yuv420p", *audio_codec,
                "-ac", str(channels), "-ar", str(rate), str(folder / name))  # fmt: skip
    audio = ["-itsoffset", str(LATE_SECONDS), "-f", "lavfi", "-i", SWEEPS.format(rate=48000)]
    _ffmpeg(*video, *audio, "-t", "5", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
            "-map", "0:v", "-map", "1:a", str(folder / "late_audio.mp4"))  # fmt: skip
    _ffmpeg(*video, "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(folder / "silent.mp4"))
    return folder


def audio_offset_seconds(path: Path) -> float:
    """When the audio starts after the video's first frame (negative: before), read with the
    `ffprobe` command line: the first audio frame's time less the first video frame's."""
    firsts = []
    for stream in ("v:0", "a:0"):  # 3 packets: an AAC file's first may be all priming, dropped
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", stream, "-read_intervals", "%+#3",
             "-show_entries", "frame=best_effort_timestamp_time", "-of", "csv=p=0", str(path)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        firsts.append(float(probe.stdout.split()[0].strip(",")))
    return firsts[1] - firsts[0]


def placed_audio(path: Path, rate: int) -> np.ndarray:
    """librosa's mono audio at `rate`, from the video's first frame (`audio_offset_seconds`)."""
    audio, _ = librosa.load(str(path), sr=rate, mono=True)
    offset = round(audio_offset_seconds(path) * rate)
    if offset >= 0:
        return np.concatenate([np.zeros(offset, np.float32), audio])
    return audio[-offset:]


def lighthouse_rows(path: Path, weights: Path) -> np.ndarray:
    """Lighthouse's PANN recipe: librosa's load at 32 kHz, mono; whole 2-s windows; CNN14's
    `embedding` of each. The audio is first placed where it starts against the video's first
    frame (`audio_offset_seconds`), which that recipe does not do: its windows start at the
    audio's first sample."""
    audio = placed_audio(path, SAMPLE_RATE_HZ)
    window = 2 * SAMPLE_RATE_HZ
    windows = audio[: len(audio) // window * window].reshape(-1, window)
    model = load_cnn14(str(weights))
    with torch.inference_mode():
        return model(torch.from_numpy(windows), None)["embedding"].numpy()


@pytest.mark.slow
def test_pann_rows_equal_lighthouses_recipe_in_every_container(
    audio_videos: Path, pann_file: Path, tmp_path: Path
):
    """AAC in MP4, MP3 in MKV, Opus in WebM, PCM in MKV at 44.1 and 48 kHz, mono and stereo,
    and audio starting 0.5 s after the first frame: each whole window's row equals the
    recipe's at cosine >= 0.999; the rows are the video grid's (3 for 5 s: the last window
    zero-padded past the audio's end); rows differ from each other."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = [*AUDIO_FILES, "late_audio.mp4"]
    for name in names:
        (inputs / name).symlink_to(audio_videos / name)
    extract(PANNBackbone(weights=str(pann_file)), inputs, tmp_path / "out")
    similarities = {}
    for name in names:
        with np.load((tmp_path / "out" / name).with_suffix(".npz")) as saved:
            ours, timestamps = saved["features"], saved["timestamps"]
            video = json.loads(str(saved["provenance"]))["video"]
        assert timestamps.tolist() == [[0.0, 2.0], [2.0, 4.0], [4.0, 5.0]], name
        late = LATE_SECONDS if name == "late_audio.mp4" else 0.0
        assert audio_offset_seconds(inputs / name) == pytest.approx(late, abs=0.03), name
        reference = lighthouse_rows(inputs / name, pann_file)
        assert len(reference) == 2, name  # whole 2-s windows only, in that recipe
        similarities[name] = cosine(ours[:2], reference)
        assert similarities[name].min() >= 0.999, (name, similarities[name])
        assert cosine(ours[:1], ours[1:2])[0] < 0.95, name  # the windows are told apart
        assert video["audio_seconds"] == pytest.approx(5.0 - late, abs=0.05), name
    print({name: [round(float(c), 6) for c in values] for name, values in similarities.items()})


@pytest.mark.slow
def test_clip_slowfast_and_pann_from_one_decode_share_the_grid(
    audio_videos: Path, pann_file: Path, tiny_clip_file: Path, slowfast_pyth_file: Path,
    tmp_path: Path,
):  # fmt: skip
    """`--model clip,slowfast,pann`: three folders whose rows have the same timestamps; the
    audio rows equal a PANN run of their own; a video without audio is a failure of pann
    alone (`no audio stream`), its video features written."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("aac_48k_stereo.mp4", "silent.mp4"):
        (inputs / name).symlink_to(audio_videos / name)
    _ffmpeg("-f", "lavfi", "-i", SWEEPS.format(rate=48000), "-t", "3", str(inputs / "talk.wav"))
    common = ["--input_dir", str(inputs), "--trainer.enable_progress_bar", "false"]
    together = run_vfe(
        "--model", "clip,slowfast,pann", "--model.clip.arch", "custom",
        "--model.clip.weights", str(tiny_clip_file),
        "--model.slowfast.weights", str(slowfast_pyth_file),
        "--model.pann.weights", str(pann_file), "--output_dir", "all", *common, cwd=tmp_path,
    )  # fmt: skip
    assert together.returncode == 1, together.stderr  # a failure: exit status 1
    alone = run_vfe(
        "--model", "pann", "--model.weights", str(pann_file), "--output_dir", "pann_alone",
        *common, cwd=tmp_path,
    )  # fmt: skip
    out = tmp_path / "all"
    grids = {
        name: np.load(out / name / "aac_48k_stereo.npz")["timestamps"]
        for name in ("clip", "slowfast", "pann")
    }
    assert grids["clip"].tolist() == grids["slowfast"].tolist() == grids["pann"].tolist()
    np.testing.assert_array_equal(
        np.load(out / "pann" / "aac_48k_stereo.npz")["features"],
        np.load(tmp_path / "pann_alone" / "aac_48k_stereo.npz")["features"],
    )
    assert (out / "clip" / "silent.npz").is_file() and (out / "slowfast" / "silent.npz").is_file()
    assert not (out / "pann" / "silent.npz").exists()
    (failure,) = [json.loads(line) for line in (out / "pann" / "failures.jsonl").open()]
    assert failure["relative_path"] == "silent.mp4" and "no audio stream" in failure["error"]
    assert alone.returncode == 1 and "no audio stream" in alone.stderr
    # Audio files are listed only where every backbone is an audio backbone.
    assert not list(out.rglob("talk.*")) and "2 videos" in together.stderr
    assert (tmp_path / "pann_alone" / "talk.npz").is_file() and "3 videos" in alone.stderr


# name -> encoder options, rate, channels: audio files, without pictures
PLAIN_AUDIO_FILES = {
    "pcm_48k_stereo.wav": (["-c:a", "pcm_s16le"], 48000, 2),
    "flac_44k_mono.flac": (["-c:a", "flac"], 44100, 1),
    "mp3_44k_stereo.mp3": (["-c:a", "libmp3lame"], 44100, 2),
    "aac_48k_mono.m4a": (["-c:a", "aac"], 48000, 1),
    "vorbis_44k_stereo.ogg": (["-c:a", "libvorbis"], 44100, 2),
}


def test_audio_files_give_the_recipes_rows_from_their_first_sample(pann_file: Path, tmp_path: Path):
    """An audio-only run lists .wav .flac .mp3 .m4a .ogg files (beside videos): time 0 is the
    file's first sample, clips cover its ~5.3 s (3 rows, the last ~1.3 s long),
    windows equal Lighthouse's recipe on `librosa.load` (zero-padded) at cosine >= 0.999, and
    `fps` is NaN (no pictures)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, (codec, rate, channels) in PLAIN_AUDIO_FILES.items():
        _ffmpeg("-f", "lavfi", "-i", SWEEPS.format(rate=rate), *codec, "-ac", str(channels),
                str(inputs / name))  # fmt: skip
    extract(PANNBackbone(weights=str(pann_file)), inputs, tmp_path / "out")
    model = load_cnn14(str(pann_file))
    window = 2 * SAMPLE_RATE_HZ
    similarities = {}
    for name in PLAIN_AUDIO_FILES:
        with np.load((tmp_path / "out" / name).with_suffix(".npz")) as saved:
            ours, timestamps, fps = saved["features"], saved["timestamps"], saved["fps"]
            provenance = json.loads(str(saved["provenance"]))
        assert np.isnan(fps), name
        assert provenance["video"]["audio_seconds"] == pytest.approx(5.3, abs=0.02), name
        audio, _ = librosa.load(str(inputs / name), sr=SAMPLE_RATE_HZ, mono=True)
        # The grid ends where the decoded audio does (AAC's last frame's padding included,
        # as librosa reads it: 5.312 s for the M4A).
        ends = [0, 2, 2, 4, 4, len(audio) / SAMPLE_RATE_HZ]
        assert timestamps.ravel().tolist() == pytest.approx(ends, abs=1e-3), name
        audio = np.pad(audio, (0, 3 * window - len(audio)))
        with torch.inference_mode():
            reference = model(torch.from_numpy(audio.reshape(3, window)), None)["embedding"]
        similarities[name] = cosine(ours, reference.numpy()).round(6).tolist()
        assert cosine(ours[:1], ours[1:2])[0] < 0.95, name  # the windows are told apart
    assert all(min(values) >= 0.999 for values in similarities.values()), similarities
    print(similarities)


def test_windows_are_librosas_samples_placed_on_the_grid(audio_videos: Path):
    """PCM (no codec in between): each 2-s window is librosa's 32-kHz mono samples exactly, the
    last one zero-padded past the audio's end; FFmpeg's swresample gives nearly the same."""
    from fractions import Fraction

    from vfe.decoding.audio import read_audio_windows

    path = audio_videos / "pcm_44k_stereo.mkv"
    starts = [Fraction(0), Fraction(2), Fraction(4)]
    windows = read_audio_windows(path, SAMPLE_RATE_HZ, Fraction(0), starts, Fraction(2), None,
                                 "soxr_hq")  # fmt: skip
    expected, _ = librosa.load(str(path), sr=SAMPLE_RATE_HZ, mono=True)
    flat = windows.samples.reshape(-1)
    np.testing.assert_array_equal(flat[: len(expected)], expected)
    assert not flat[len(expected) :].any() and len(expected) == 5 * SAMPLE_RATE_HZ
    assert windows.audio_seconds == pytest.approx(5.0, abs=0.01)
    ffmpeg = read_audio_windows(path, SAMPLE_RATE_HZ, Fraction(0), starts, Fraction(2))
    assert (
        np.corrcoef(ffmpeg.samples.reshape(-1)[:-SAMPLE_RATE_HZ], flat[:-SAMPLE_RATE_HZ])[0, 1]
        > 0.999
    )


def test_an_audio_backbone_needs_pyav(audio_videos: Path, pann_file: Path, tmp_path: Path):
    result = run_vfe(
        "--model", "pann", "--model.weights", str(pann_file), "--input_dir", str(audio_videos),
        "--output_dir", "out", "--data.decoder", "torchcodec", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--model pann places the audio by the video's first frame" in result.stderr


def test_a_missing_audio_extra_names_the_install_command(monkeypatch):
    from vfe.errors import VfeError

    monkeypatch.setitem(sys.modules, "torchlibrosa", None)  # `import torchlibrosa` fails
    with pytest.raises(VfeError, match=r"--model pann needs the 'audio' extra.*\.\[audio\]"):
        PANNBackbone(weights="random").configure_model()


def test_a_file_of_another_model_is_refused(tiny_clip_file: Path):
    from vfe.errors import VfeError

    with pytest.raises(VfeError, match="does not fit PANN CNN14"):
        PANNBackbone(weights=str(tiny_clip_file)).configure_model()


def test_npy_writes_lighthouses_pann_files(tmp_path: Path):
    """`vfe npy DIR OUT`: each .npz's features as `OUT/<vid>.npy` (Lighthouse reads
    `features/<dataset>/pann/{vid}.npy`); nothing existing replaced unless asked."""
    from conftest import run_in_process

    features = tmp_path / "pann"
    (features / "sub").mkdir(parents=True)
    rows = {"a": np.arange(6, dtype=np.float32).reshape(3, 2), "sub/b": np.ones((1, 2))}
    for name, array in rows.items():
        np.savez(features / f"{name}.npz", features=array, timestamps=np.zeros((len(array), 2)))
    result = run_in_process(["npy", str(features), "out"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote 2 .npy files" in result.stderr
    for name, array in rows.items():
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{name}.npy"), array)
    again = run_in_process(["npy", str(features), "out"], tmp_path)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    key = run_in_process(["npy", str(features), "o2", "--key", "hidden"], tmp_path)
    assert key.returncode == 2 and "has no 'hidden'" in key.stderr
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").iterdir())


@pytest.mark.slow
def test_loading_pann_goes_nowhere_near_the_network(tmp_path: Path):
    """A fresh process: building CNN14 neither runs panns_inference's __init__ (which fetches
    AudioSet's labels into ~/panns_data with wget) nor leaves the package imported."""
    code = (
        "import sys\nfrom vfe.backbones.pann import load_cnn14\nload_cnn14('random')\n"
        "print('panns_inference' in sys.modules, 'panns_inference.models' in sys.modules)"
    )
    env = {**os.environ, "HOME": str(tmp_path), "PATH": ""}  # no wget to run
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.split() == ["False", "True"], result.stdout + result.stderr
    assert not (tmp_path / "panns_data").exists()


@pytest.fixture(scope="module")
def tiny_clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random LAION-CLAP in `save_pretrained`'s layout, with the unfused checkpoints'
    feature extractor (48 kHz, 10-s input, repeat-padding)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    audio = transformers.ClapAudioConfig(
        depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8,
        hidden_size=64, projection_hidden_size=32,
    )  # fmt: skip
    text = transformers.ClapTextConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        vocab_size=100, projection_hidden_size=32,
    )  # fmt: skip
    config = transformers.ClapConfig(
        text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16
    )
    folder = tmp_path_factory.mktemp("clap")
    transformers.ClapModel(config).save_pretrained(folder)
    transformers.ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(folder)
    # A byte-level BPE tokenizer of single letters (RoBERTa's kind, as CLAP's), for `vfe text`.
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u0120"]  # "Ġ": a space
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab |= {letter: 4 + i for i, letter in enumerate(letters)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.RobertaTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt")
    )
    tokenizer.save_pretrained(folder)
    return folder


def test_clap_rows_equal_its_processor_on_librosas_audio(
    audio_videos: Path, tiny_clap_dir: Path, tmp_path: Path
):
    """`--model clap`: each window's row equals the feature extractor and
    `get_audio_features` on librosa's 48-kHz mono audio of the window (as LAION-CLAP's
    examples load it), placed as the video's; the last window is repeat-padded by the
    extractor itself."""
    import transformers

    from vfe.backbones.clap import CLAPBackbone

    inputs = tmp_path / "in"
    inputs.mkdir()
    names = ["aac_48k_stereo.mp4", "mp3_44k_mono.mkv", "late_audio.mp4"]
    for name in names:
        (inputs / name).symlink_to(audio_videos / name)
    extract(CLAPBackbone(arch=str(tiny_clap_dir)), inputs, tmp_path / "out")
    model = transformers.ClapModel.from_pretrained(tiny_clap_dir).eval()
    extractor = transformers.ClapFeatureExtractor.from_pretrained(tiny_clap_dir)
    rate = extractor.sampling_rate
    for name in names:
        with np.load((tmp_path / "out" / name).with_suffix(".npz")) as saved:
            ours = saved["features"]
            assert saved["timestamps"].tolist() == [[0.0, 2.0], [2.0, 4.0], [4.0, 5.0]]
        audio = placed_audio(inputs / name, rate)
        windows = [audio[i * 2 * rate : (i + 1) * 2 * rate] for i in range(2)]
        with torch.inference_mode():
            features = extractor(windows, sampling_rate=rate, return_tensors="pt")
            reference = model.get_audio_features(**features).pooler_output.numpy()
        assert ours.shape == (3, 16)
        assert cosine(ours[:2], reference).min() >= 0.9999, (name, cosine(ours[:2], reference))
        assert cosine(ours[:1], ours[1:2])[0] < 0.999, name  # rows of the random tower differ


def test_clap_text_features_are_get_text_features(
    audio_videos: Path, tiny_clap_dir: Path, tmp_path: Path
):
    """`vfe text --like` a CLAP folder: per query the text model's token states and
    `get_text_features`' pooled embedding, as the model gives them."""
    import transformers
    from conftest import run_in_process

    from vfe.backbones.clap import CLAPBackbone

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.mp4").symlink_to(audio_videos / "aac_48k_stereo.mp4")
    extract(CLAPBackbone(arch=str(tiny_clap_dir)), inputs, tmp_path / "clap")
    (tmp_path / "q.jsonl").write_text(
        '{"qid": 7, "query": "a dog barks"}\n{"qid": 8, "query": "rain"}\n'
    )
    result = run_in_process(
        ["text", "--like", str(tmp_path / "clap"), "--queries", str(tmp_path / "q.jsonl"),
         "--output_dir", str(tmp_path / "clap_text")], tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = transformers.ClapModel.from_pretrained(tiny_clap_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_clap_dir)
    for qid, query in (("7", "a dog barks"), ("8", "rain")):
        tokens = tokenizer([query], return_tensors="pt")
        with torch.inference_mode():
            states = model.text_model(**tokens).last_hidden_state[0].numpy()
            pooled = model.get_text_features(**tokens).pooler_output[0].numpy()
        with np.load(tmp_path / "clap_text" / f"qid{qid}.npz") as saved:
            assert saved["last_hidden_state"].shape == (len(query) + 2, 32)
            np.testing.assert_allclose(saved["last_hidden_state"], states, atol=1e-5)
            np.testing.assert_allclose(saved["pooler_output"], pooled, atol=1e-6)


@pytest.mark.slow
def test_a_video_split_over_workers_gives_the_same_audio_rows(
    audio_videos: Path, pann_file: Path, tmp_path: Path
):
    """Two workers, each a segment of the video: each reads its own clips' windows."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.mp4").symlink_to(audio_videos / "late_audio.mp4")
    extract(PANNBackbone(weights=str(pann_file)), inputs, tmp_path / "whole")
    extract(PANNBackbone(weights=str(pann_file)), inputs, tmp_path / "split", num_workers=2,
            min_segment_seconds=2.0)  # fmt: skip
    with (
        np.load(tmp_path / "whole" / "a.npz") as whole,
        np.load(tmp_path / "split" / "a.npz") as split,
    ):
        assert json.loads(str(split["provenance"]))["video"]["segments"] == 2
        np.testing.assert_allclose(split["features"], whole["features"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(split["timestamps"], whole["timestamps"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pann", "clap"])
def test_the_shipped_audio_configs_run(
    name, audio_videos: Path, pann_file: Path, tiny_clap_dir: Path, tmp_path: Path
):
    """configs/pann.yaml and configs/clap.yaml as the docs give them, the network overridden."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.mp4").symlink_to(audio_videos / "aac_48k_stereo.mp4")
    network = f"--model.weights={pann_file}" if name == "pann" else f"--model.arch={tiny_clap_dir}"
    result = run_vfe(
        "--config", str(Path(__file__).parents[1] / "configs" / f"{name}.yaml"), network,
        "--input_dir", str(inputs), "--output_dir", name, "--data.num_workers", "0",
        "--trainer.enable_progress_bar", "false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / name / "a.npz") as saved:
        assert saved["features"].shape == (3, 2048 if name == "pann" else 16)
        record = json.loads(str(saved["provenance"]))
    rate, resampler = (SAMPLE_RATE_HZ, "soxr_hq") if name == "pann" else (48000, "soxr_hq")
    assert record["preprocessing"]["sample_rate_hz"] == rate
    assert record["preprocessing"]["resampler"] == resampler
    assert record["weights_sha256"] not in ("", "random")
