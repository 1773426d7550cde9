"""Runs over webdataset tar shards (`--input_shards`), local and on an S3 API server on
127.0.0.1 (moto's, as s3fs's own tests run it): features equal those of the same videos as
files, output shards mirror the input's with their stats written last, and reruns resume per
shard."""

import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_in_process, run_vfe

from vfe.bench.synthetic import write_video

webdataset = pytest.importorskip("webdataset")
pytest.importorskip("s3fs")

# shard name -> its samples: (key, frames) with a video, or (key, None) without one
SHARDS = {
    "00000": [("000000000", 30), ("000000001", 55)],
    "00001": [("000000002", 12), ("000000003", None), ("000000004", 40)],
    "00002": [("000000005", 25)],
}


def _write_shards(folder: Path, videos: Path) -> None:
    """video2dataset's layout, written with webdataset's TarWriter: `<key>.mp4`,
    `<key>.json`, `<key>.txt` per sample (a sample whose download failed has no mp4)."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard, samples in SHARDS.items():
        with webdataset.TarWriter(str(folder / f"{shard}.tar")) as sink:
            for number, (key, frames) in enumerate(samples):
                sample = {"__key__": key, "json": {"key": key}, "txt": f"caption {number}"}
                if frames is not None:
                    path = write_video(videos / f"{key}.mp4", frames, seed=int(key))
                    sample["mp4"] = path.read_bytes()
                sink.write(sample)


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the shards, the same videos as files named by key)."""
    root = tmp_path_factory.mktemp("shards")
    _write_shards(root / "shards", root / "videos")
    return root / "shards", root / "videos"


def _clip_args(weights: Path) -> list[str]:
    return [
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(weights),
        "--trainer.enable_progress_bar", "false", "--data.num_workers", "0",
    ]  # fmt: skip


def _read_output_shard(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """An output shard as webdataset reads it: key -> the arrays of its `npz`."""
    samples = {}
    for sample in webdataset.WebDataset(str(path), shardshuffle=False):
        with np.load(io.BytesIO(sample["npz"])) as saved:
            samples[sample["__key__"]] = {name: saved[name] for name in saved.files}
    return samples


def test_shards_give_the_features_of_the_same_videos_as_files_and_resume_per_shard(
    shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path
):
    shards, videos = shard_folder
    pattern = str(shards / "{00000..00002}.tar")
    files = run_vfe(*_clip_args(tiny_clip_file), "--input_dir", str(videos),
                    "--output_dir", "files", cwd=tmp_path)  # fmt: skip
    assert files.returncode == 0, files.stderr
    result = run_vfe(*_clip_args(tiny_clip_file), "--input_shards", pattern,
                     "--output_dir", "out", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr  # the sample without a video failed
    assert "shards done 3, skipped 0; written 5, failed 1" in result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.tar" for name in SHARDS] + [f"{name}.stats.json" for name in SHARDS]
    )
    for shard, samples in SHARDS.items():
        written = _read_output_shard(out / f"{shard}.tar")
        assert list(written) == [key for key, frames in samples if frames is not None]
        for key, arrays in written.items():
            with np.load(tmp_path / "files" / f"{key}.npz") as from_file:
                for name in ("features", "timestamps", "fps", "clip_length"):
                    np.testing.assert_array_equal(arrays[name], from_file[name])
            provenance = json.loads(str(arrays["provenance"]))
            assert provenance["video"]["path"].endswith(f"{shard}.tar/{key}.mp4")
        stats = json.loads((out / f"{shard}.stats.json").read_text())
        assert stats["samples"] == len(samples) and stats["written"] == len(written)
        assert stats["input"] == str(shards / f"{shard}.tar")
    failures = json.loads((out / "00001.stats.json").read_text())["failures"]
    assert [(f["relative_path"], f["stage"]) for f in failures] == [("000000003", "open")]
    assert "no video member (members: json, txt)" in failures[0]["error"]
    # The rows differ from each other (a test of equality that could not fail otherwise).
    features = _read_output_shard(out / "00000.tar")["000000001"]["features"]
    assert not np.allclose(features[0], features[1])

    again = run_vfe(*_clip_args(tiny_clip_file), "--input_shards", pattern,
                    "--output_dir", "out", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (
        "3 shards in" in again.stderr and "3 already done (skipped), 0 to extract" in again.stderr
    )

    # A shard whose data exists without its stats is not done: it alone is redone.
    (out / "00001.stats.json").unlink()
    before = (out / "00000.tar").stat().st_mtime_ns
    redo = run_vfe(*_clip_args(tiny_clip_file), "--input_shards", pattern,
                   "--output_dir", "out", cwd=tmp_path)  # fmt: skip
    assert "2 already done (skipped), 1 to extract" in redo.stderr, redo.stderr
    assert (out / "00001.stats.json").is_file() and (out / "00000.tar").stat().st_mtime_ns == before


def test_a_truncated_shard_fails_alone_and_is_read_again_by_the_rerun(
    shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path
):
    shards, _ = shard_folder
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("00000", "00002"):
        (inputs / f"{name}.tar").symlink_to(shards / f"{name}.tar")
    whole = (shards / "00001.tar").read_bytes()
    (inputs / "00001.tar").write_bytes(whole[: len(whole) // 2])  # cut inside a member
    pattern = str(inputs / "{00000,00001,00002}.tar")
    result = run_vfe(*_clip_args(tiny_clip_file), "--input_shards", pattern,
                     "--output_dir", "out", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "00001.tar: not read to its end: ReadError" in result.stderr, result.stderr
    out = tmp_path / "out"
    assert (out / "00000.stats.json").is_file() and (out / "00002.stats.json").is_file()
    assert not (out / "00001.stats.json").exists() and not (out / "00001.tar").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    (inputs / "00001.tar").write_bytes(whole)
    rerun = run_vfe(*_clip_args(tiny_clip_file), "--input_shards", pattern,
                    "--output_dir", "out", cwd=tmp_path)  # fmt: skip
    assert rerun.returncode == 1, rerun.stderr  # its sample without a video fails again
    assert "2 already done (skipped), 1 to extract" in rerun.stderr
    assert (out / "00001.stats.json").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--input_dir", "."], "give one source of videos"),
        (["--output_format", "npz"], "writes shards (--output_format webdataset or parquet)"),
        (["--data.decoder", "torchcodec"], "--data.decoder pyav"),
        (["--layout", "flat"], "names each output by its sample's key"),
    ],
)
def test_shard_options_that_do_not_go_together_are_refused(
    arguments: list[str], message: str, tiny_clip_file: Path, tmp_path: Path
):
    result = run_vfe(*_clip_args(tiny_clip_file), "--input_shards", "x/{0..1}.tar",
                     *arguments, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_missing_shard_is_named_before_any_work(tiny_clip_file: Path, tmp_path: Path):
    result = run_vfe(*_clip_args(tiny_clip_file), "--input_shards",
                     str(tmp_path / "{000..002}.tar"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "000.tar' does not exist" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 (as s3fs's tests run it), with test credentials."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.mark.slow  # a server of its own; the local shards cover the logic
def s3_client(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, str]]:
    """An s3fs filesystem on the test server, and the environment a run needs to reach it."""
    import fsspec
    import s3fs

    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
    }  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    return fsspec.filesystem("s3"), env


def test_shards_on_s3_in_and_out_resume_per_shard(
    shard_folder: tuple[Path, Path],
    tiny_clip_file: Path,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    s3, env = s3_client(s3_endpoint, monkeypatch)
    s3.mkdir("videos")
    shards, _ = shard_folder
    for name in SHARDS:
        s3.put_file(str(shards / f"{name}.tar"), f"videos/shards/{name}.tar")
    arguments = [
        *_clip_args(tiny_clip_file), "--input_shards", "s3://videos/shards/{00000..00002}.tar",
        "--output_dir", "s3://videos/feats",
    ]  # fmt: skip
    result = run_vfe(*arguments, cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr  # the sample without a video
    assert "shards done 3, skipped 0; written 5, failed 1" in result.stderr
    s3.invalidate_cache()
    names = sorted(Path(p).name for p in s3.ls("videos/feats"))
    assert names == sorted([f"{n}.tar" for n in SHARDS] + [f"{n}.stats.json" for n in SHARDS])
    local = tmp_path / "local"
    local.mkdir()
    for name in SHARDS:
        s3.get_file(f"videos/feats/{name}.tar", str(local / f"{name}.tar"))
    same_locally = run_vfe(*_clip_args(tiny_clip_file), "--input_shards",
                           str(shards / "{00000..00002}.tar"), "--output_dir", "here",
                           cwd=tmp_path)  # fmt: skip
    assert same_locally.returncode == 1
    for name in SHARDS:
        from_s3 = _read_output_shard(local / f"{name}.tar")
        from_disk = _read_output_shard(tmp_path / "here" / f"{name}.tar")
        assert list(from_s3) == list(from_disk)
        for key in from_s3:
            np.testing.assert_array_equal(from_s3[key]["features"], from_disk[key]["features"])
    # Killed after two shards: the third's stats are missing (its data is there), so a rerun
    # redoes that one only.
    info = run_in_process(["info", "s3://videos/feats"], tmp_path, env)
    assert "3 finished shards (webdataset (3)), 6 samples, 5 written" in info.stdout, info
    s3.rm("videos/feats/00002.stats.json")
    rerun = run_vfe(*arguments, cwd=tmp_path, env=env)
    assert "2 already done (skipped), 1 to extract" in rerun.stderr, rerun.stderr
    s3.invalidate_cache()
    assert s3.exists("videos/feats/00002.stats.json")


def test_parts_share_the_shards_each_exactly_once(
    shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path
):
    """Two `--part` jobs over three shards: each shard done by one of them."""
    shards, _ = shard_folder
    pattern = str(shards / "{00000..00002}.tar")
    for part in ("0/2", "1/2"):
        result = run_vfe(*_clip_args(tiny_clip_file), "--input_shards", pattern, "--part", part,
                         "--output_dir", "out", cwd=tmp_path)  # fmt: skip
        assert f"part {part} (--part): " in result.stderr, result.stderr
    stats = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.stats.json")]
    assert len({s["run"] for s in stats}) == 2  # two jobs wrote them
    assert sorted(s["shard"] for s in stats) == sorted(SHARDS)


@pytest.mark.parametrize("other_job", ["finishes it", "dies"])
def test_a_shard_another_live_job_holds_is_left_to_it_and_waited_for(
    other_job: str,
    shard_folder: tuple[Path, Path],
    tiny_clip_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """Jobs sharing a local folder claim shards as they go: a shard another live job holds is
    not read, and the run waits for it at its end. Finished by that job, the run exits 0 and
    says so; left behind by a job that died, it is not finished (exit 1), and a rerun does it."""
    import threading

    from vfe.output import audit as audit_module
    from vfe.planning import owners
    from vfe.planning.claims import Claims

    monkeypatch.setattr(audit_module, "POLL_SECONDS", 0.05)
    shards, _ = shard_folder
    pattern = str(shards / "{00000..00002}.tar")
    args = [*_clip_args(tiny_clip_file), "--input_shards", pattern]
    run_vfe(*args, "--output_dir", "reference", cwd=tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    owners.register([out], owners.this_run("other"))  # a live job (this process) holds 00001
    other = Claims({"clip": out}, "other", names_output=True)
    assert other.claim("00001.stats.json", ("clip",)) == ("clip",)

    def other_job_ends() -> None:
        while not (out / "00002.stats.json").exists():  # the run has done its own shards
            time.sleep(0.02)
        time.sleep(0.3)
        if other_job == "finishes it":
            for name in ("00001.tar", "00001.stats.json"):
                (out / name).write_bytes((tmp_path / "reference" / name).read_bytes())
            other.release("00001.stats.json", ("clip",))
        owners.unregister([out], "other")

    thread = threading.Thread(target=other_job_ends)
    thread.start()
    result = run_vfe(*args, "--output_dir", "out", cwd=tmp_path)
    thread.join()
    assert "waiting for 1 shard(s) that another job sharing the folder is extracting" in (
        result.stderr
    ), result.stderr
    assert "shards done 2, skipped 0; written 3, failed 0" in result.stderr, result.stderr
    if other_job == "finishes it":
        assert result.returncode == 0, result.stderr
        assert "1 shard(s) of this run's plan were done by another job" in result.stderr
    else:
        assert result.returncode == 1, result.stderr
        assert "1 shard(s) not finished (no .stats.json)" in result.stderr
        rerun = run_vfe(*args, "--output_dir", "out", cwd=tmp_path)
        assert "2 already done (skipped), 1 to extract" in rerun.stderr, rerun.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow  # three processes of their own
def test_jobs_started_together_into_one_folder_do_each_of_six_shards_once(
    tiny_clip_file: Path, tmp_path: Path
):
    """Three jobs over six shards, one folder, no --part: they share the shards by claims as
    they go. Each shard is done once (one stats file, the features of one run), every job
    exits 0, and nothing of theirs is left in the folder."""
    import subprocess
    import sys

    (tmp_path / "in").mkdir()
    for number in range(6):
        with webdataset.TarWriter(str(tmp_path / "in" / f"{number:05d}.tar")) as sink:
            for sample in range(2):
                key = f"{number}{sample:04d}"
                video = write_video(tmp_path / "videos" / f"{key}.mp4", 40, seed=int(key))
                sink.write({"__key__": key, "mp4": video.read_bytes()})
    args = [
        *_clip_args(tiny_clip_file),
        "--input_shards",
        str(tmp_path / "in" / "{00000..00005}.tar"),
    ]
    run_vfe(*args, "--output_dir", "reference", cwd=tmp_path)
    command = [sys.executable, "-m", "vfe", "predict", *args, "--output_dir", "out"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    jobs = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [(job.wait(timeout=600), job.communicate()[1]) for job in jobs]
    done = 0
    for code, stderr in results:
        assert code == 0, stderr
        done += int(stderr.split("shards done ", 1)[1].split(",", 1)[0])
    assert done == 6, [stderr for _, stderr in results]  # none done twice
    for number in range(6):
        name = f"{number:05d}"
        stats = json.loads((tmp_path / "out" / f"{name}.stats.json").read_text())
        assert stats["written"] == 2
        ours = _read_output_shard(tmp_path / "out" / f"{name}.tar")
        reference = _read_output_shard(tmp_path / "reference" / f"{name}.tar")
        for key in reference:
            np.testing.assert_array_equal(ours[key]["features"], reference[key]["features"])
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


def test_output_shards_are_plain_tars_of_npz_members(
    shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path
):
    """Readable without webdataset or vfe: `tarfile` and `numpy.load`."""
    shards, _ = shard_folder
    result = run_vfe(*_clip_args(tiny_clip_file), "--input_shards", str(shards / "00000.tar"),
                     "--output_dir", "out", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    with tarfile.open(tmp_path / "out" / "00000.tar") as archive:
        names = archive.getnames()
        with np.load(io.BytesIO(archive.extractfile(names[0]).read())) as saved:
            assert saved["features"].shape[1] == 32
    assert names == ["000000000.npz", "000000001.npz"]


@pytest.mark.slow
def test_two_ranks_and_two_workers_do_each_shard_exactly_once(
    shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path
):
    """DDP over three shards (one rank gets two), each rank's shards over two DataLoader
    workers: every shard done once, by this one run, with the features of one process."""
    shards, _ = shard_folder
    pattern = str(shards / "{00000..00002}.tar")
    common = [*_clip_args(tiny_clip_file)[:-2], "--input_shards", pattern]
    double = run_vfe(
        *common, "--data.num_workers", "2", "--output_dir", "two", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert double.returncode == 1, double.stderr  # the sample without a video
    assert "shards done 3, skipped 0; written 5, failed 1" in double.stderr
    single = run_vfe(*common, "--data.num_workers", "0", "--output_dir", "one", cwd=tmp_path)
    stats = [json.loads((tmp_path / "two" / f"{n}.stats.json").read_text()) for n in SHARDS]
    assert len({s["run"] for s in stats}) == 1
    for name in SHARDS:
        one = _read_output_shard(tmp_path / "one" / f"{name}.tar")
        two = _read_output_shard(tmp_path / "two" / f"{name}.tar")
        assert list(one) == list(two)
        for key in one:
            np.testing.assert_allclose(two[key]["features"], one[key]["features"], atol=1e-5)
    assert single.returncode == 1


def test_parquet_output_holds_a_row_per_video_readable_by_pyarrow(
    shard_folder: tuple[Path, Path],
    tiny_clip_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """`--output_format parquet`: `<shard>.parquet` with key, features, timestamps, fps,
    clip_length and provenance per video (pyarrow, pandas and Hugging Face datasets read it,
    the last offline), written a row group
    at a time, equal to the tar's arrays; its stats record the
    format, and a rerun asking for the other format is refused (not silently skipped)."""
    import pyarrow.parquet as pq

    pandas = pytest.importorskip("pandas")

    shards, _ = shard_folder
    arguments = [*_clip_args(tiny_clip_file), "--input_shards", str(shards / "00000.tar")]
    tars = run_vfe(*arguments, "--output_dir", "tars", cwd=tmp_path)
    monkeypatch.setattr("vfe.output.shard_sink.PARQUET_ROWS_PER_GROUP", 1)  # a group per row
    result = run_vfe(*arguments, "--output_format", "parquet", "--output_dir", "pq", cwd=tmp_path)
    assert tars.returncode == 0 and result.returncode == 0, result.stderr
    assert pq.ParquetFile(tmp_path / "pq" / "00000.parquet").num_row_groups == 2
    table = pq.read_table(tmp_path / "pq" / "00000.parquet")
    assert table.column_names == [
        "key", "features", "timestamps", "fps", "clip_length", "provenance",
    ]  # fmt: skip
    from_tar = _read_output_shard(tmp_path / "tars" / "00000.tar")
    rows = table.to_pylist()
    assert [row["key"] for row in rows] == list(from_tar)
    for row in rows:
        arrays = from_tar[row["key"]]
        np.testing.assert_array_equal(np.array(row["features"], np.float32), arrays["features"])
        np.testing.assert_array_equal(np.array(row["timestamps"]), arrays["timestamps"])
        assert row["fps"] == arrays["fps"] and row["clip_length"] == arrays["clip_length"]
        assert (
            json.loads(row["provenance"])["model"] == json.loads(str(arrays["provenance"]))["model"]
        )
    frame = pandas.read_parquet(tmp_path / "pq" / "00000.parquet")  # pandas reads it too
    assert list(frame["key"]) == list(from_tar) and len(frame["features"][1]) == 2
    # and Hugging Face datasets, offline, with its own cache
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "pq" / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "hf"),
    ).with_format("numpy")
    assert list(loaded["key"]) == list(from_tar)
    for row in loaded:
        np.testing.assert_array_equal(
            np.stack(row["features"]).astype(np.float32), from_tar[row["key"]]["features"]
        )
    assert json.loads((tmp_path / "pq" / "00000.stats.json").read_text())["format"] == "parquet"
    other = run_vfe(*arguments, "--output_dir", "pq", cwd=tmp_path)
    assert other.returncode == 2 and "output format: 'parquet' (shard)" in other.stderr


def test_info_summarises_a_folder_of_output_shards(
    shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path
):

    shards, _ = shard_folder
    pattern = str(shards / "{00000..00002}.tar")
    result = run_vfe(*_clip_args(tiny_clip_file), "--input_shards", pattern,
                     "--output_dir", "out", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr
    info = run_in_process(["info", "out"], tmp_path)
    assert "3 finished shards (webdataset (3)), 6 samples, 5 written" in info.stdout, info
    assert "00001/000000003: open: no video member" in info.stdout
    (tmp_path / "out" / "00002.stats.json").write_text('{"shard": "000')  # cut off
    broken = run_in_process(["info", "out"], tmp_path)
    assert broken.returncode == 2, broken.stderr
    assert broken.stderr.startswith("vfe info: error: out cannot be read (JSONDecodeError")


@pytest.mark.parametrize("output_format", ["webdataset", "parquet"])
def test_info_and_pack_read_output_shards_at_a_url(
    output_format: str, shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path
):
    """`vfe info URL` and `vfe pack URL OUT.h5` over output shards written to a URL
    (fsspec's in-memory filesystem; S3 in the S3 test): the same as over the local copy, and
    `vfe text --like URL` finds their model; `vfe search` asks for a local folder."""
    import fsspec

    from vfe.text.command import folder_model

    h5py = pytest.importorskip("h5py")
    shards, _ = shard_folder
    url = f"memory://read-back-{output_format}/feats"
    args = [*_clip_args(tiny_clip_file), "--input_shards", str(shards / "{00000..00002}.tar"),
            "--output_format", output_format]  # fmt: skip
    run_vfe(*args, "--output_dir", url, cwd=tmp_path)
    run_vfe(*args, "--output_dir", "local", cwd=tmp_path)
    try:
        remote = run_in_process(["info", url], tmp_path)
        local = run_in_process(["info", "local"], tmp_path)
        assert remote.returncode == 0, remote.stderr
        assert remote.stdout.replace(url, "local") == local.stdout
        assert run_in_process(["pack", url, "remote.h5"], tmp_path).returncode == 0
        assert run_in_process(["pack", "local", "local.h5"], tmp_path).returncode == 0
        with h5py.File(tmp_path / "remote.h5") as remote_h5, h5py.File(tmp_path / "local.h5") as h5:
            assert sorted(remote_h5) == sorted(h5) and len(h5) == 5
            for name in h5:
                np.testing.assert_array_equal(remote_h5[name][()], h5[name][()])
        empty = run_in_process(["info", "memory://read-back-none/feats"], tmp_path)
        assert empty.returncode == 2 and "holds no finished output shards" in empty.stderr
        assert folder_model(url) == folder_model(tmp_path / "local")  # vfe text --like URL
        search = run_in_process(["search", "a dog", url], tmp_path)
        assert search.returncode == 2 and "search keeps an index beside" in search.stderr
    finally:
        fsspec.filesystem("memory").rm(f"/read-back-{output_format}", recursive=True)


@pytest.mark.slow  # a server of its own; the local shards cover the logic
def test_shards_over_http(shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path):
    """`http://` shards (fsspec's HTTP filesystem) from Python's `http.server` on 127.0.0.1."""
    import functools
    import http.server
    import threading

    shards, _ = shard_folder
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{{00000..00002}}.tar"
        result = run_vfe(*_clip_args(tiny_clip_file), "--input_shards", url,
                         "--output_dir", "out", cwd=tmp_path)  # fmt: skip
    finally:
        server.shutdown()
    assert "shards done 3, skipped 0; written 5, failed 1" in result.stderr, result.stderr
    local = run_vfe(*_clip_args(tiny_clip_file), "--input_shards",
                    str(shards / "00000.tar"), "--output_dir", "here", cwd=tmp_path)  # fmt: skip
    assert local.returncode == 0
    over_http = _read_output_shard(tmp_path / "out" / "00000.tar")
    for key, arrays in _read_output_shard(tmp_path / "here" / "00000.tar").items():
        np.testing.assert_array_equal(over_http[key]["features"], arrays["features"])


def test_an_output_shard_whose_upload_fails_is_not_done_and_the_run_goes_on(
    shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path, monkeypatch
):
    """Output at a URL (fsspec's in-memory filesystem here): an upload that fails after the
    filesystem's own retries leaves that shard without stats (not done) and the others
    written; the run exits 1 and the same command writes it."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    shards, _ = shard_folder
    upload = MemoryFileSystem.put_file

    def failing_put_file(self, local: str, remote: str, *args: Any, **kwargs: Any) -> None:
        if remote.endswith("00000.tar"):
            raise OSError("injected: the upload failed")
        upload(self, local, remote, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "put_file", failing_put_file)
    args = [*_clip_args(tiny_clip_file), "--input_shards", str(shards / "{00000..00002}.tar"),
            "--output_dir", "memory://upload-test/feats"]  # fmt: skip
    result = run_vfe(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "feats/00000.tar: not uploaded (OSError: injected: the upload failed)" in result.stderr
    assert "shards done 2, skipped 0" in result.stderr, result.stderr
    memory = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[1] for p in memory.ls("/upload-test/feats", detail=False)) == [
        "00001.stats.json", "00001.tar", "00002.stats.json", "00002.tar"
    ]  # fmt: skip
    monkeypatch.setattr(MemoryFileSystem, "put_file", upload)
    rerun = run_vfe(*args, cwd=tmp_path)
    assert "2 already done (skipped), 1 to extract" in rerun.stderr, rerun.stderr
    assert memory.exists("/upload-test/feats/00000.stats.json")
    memory.rm("/upload-test", recursive=True)


class _FlakyServer:
    """An HTTP server on 127.0.0.1 for the files of `folder`, with byte ranges (as object
    stores serve them), whose responses can be cut: a file named in `cut` gets half of each
    response's body and then a closed connection, `cut[name]` times (-1: always)."""

    def __init__(self, folder: Path) -> None:
        import http.server
        import threading

        self.folder, self.cut, self.requests, self.cuts = folder, {}, [], []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._respond(body=False)

            def do_GET(self) -> None:
                self._respond(body=True)

            def _respond(self, body: bool) -> None:
                name = self.path.lstrip("/")
                path = server.folder / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start, end = 0, len(data) - 1
                asked = self.headers.get("Range")
                if asked:
                    first, _, last = asked.removeprefix("bytes=").partition("-")
                    start, end = int(first), min(int(last or end), end)
                self.send_response(206 if asked else 200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                if asked:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                server.requests.append((name, start))
                part = data[start : end + 1]
                if server.cut.get(name, 0):
                    server.cut[name] -= 1
                    server.cuts.append(len(server.requests) - 1)
                    self.wfile.write(part[: len(part) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(part)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


def test_a_broken_read_is_reopened_where_it_stopped(tmp_path: Path, monkeypatch):
    """The storage reader asks again from the byte it had reached (a range request), and the
    bytes it returns are the file's; one cut too many is an OSError naming the URL."""
    from vfe.decoding import source

    monkeypatch.setattr(source, "FIRST_WAIT_SECONDS", 0.01)
    data = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (tmp_path / "blob.bin").write_bytes(data)
    server = _FlakyServer(tmp_path)
    try:
        with source.StorageReader(f"{server.url}/blob.bin", block_size=8192) as reader:
            assert reader.read(20_000) == data[:20_000]
            server.cut["blob.bin"] = 1  # the next request is cut
            assert reader.read() == data[20_000:]
            assert reader.retries == 1
        after_the_cut = server.requests[server.cuts[0] + 1 :]
        assert after_the_cut[0] == ("blob.bin", 20_000)  # from where the reader had reached
        server.cut["blob.bin"] = -1
        with (
            source.StorageReader(f"{server.url}/blob.bin", block_size=8192) as reader,
            pytest.raises(OSError, match=r"blob.bin: .* \(after 4 tries\)"),
        ):
            reader.read()
    finally:
        server.close()


def test_a_shard_whose_connection_breaks_is_read_again_or_fails_alone(
    shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path, monkeypatch
):
    """Over HTTP: a shard whose first response is cut is read again and done; one whose
    every response is cut fails after the reader's tries, alone (the run goes on, exits 1);
    the same command does it once the server serves it whole."""
    from vfe.decoding import source

    monkeypatch.setattr(source, "FIRST_WAIT_SECONDS", 0.01)
    shards, _ = shard_folder
    server = _FlakyServer(shards)
    server.cut = {"00001.tar": 1, "00002.tar": -1}
    args = [*_clip_args(tiny_clip_file), "--input_shards", f"{server.url}/{{00000..00002}}.tar",
            "--output_dir", "out"]  # fmt: skip
    try:
        result = run_vfe(*args, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "00001.tar: ClientPayloadError" in result.stderr, result.stderr
        assert "reading again from byte 0 in 0.01 s (try 2 of 4)" in result.stderr
        assert "00002.tar: not read to its end: OSError" in result.stderr
        assert "(after 4 tries)" in result.stderr
        assert "shards done 2, skipped 0; written 4, failed 1" in result.stderr
        assert "1 shard(s) not finished (no .stats.json)" in result.stderr
        out = tmp_path / "out"
        assert sorted(p.name for p in out.iterdir()) == [
            "00000.stats.json", "00000.tar", "00001.stats.json", "00001.tar"
        ]  # fmt: skip
        local = run_vfe(*args[:-1], "local", "--input_shards", str(shards / "00001.tar"),
                        cwd=tmp_path)  # fmt: skip
        assert local.returncode == 1, local.stderr  # its sample without a video
        over_http = _read_output_shard(out / "00001.tar")
        for key, arrays in _read_output_shard(tmp_path / "local" / "00001.tar").items():
            # batched with other shards' samples here: equal up to float rounding
            np.testing.assert_allclose(over_http[key]["features"], arrays["features"], atol=1e-6)
        server.cut = {}
        rerun = run_vfe(*args, cwd=tmp_path)
        assert "2 already done (skipped), 1 to extract" in rerun.stderr, rerun.stderr
        assert rerun.returncode == 0, rerun.stderr
    finally:
        server.close()


@pytest.mark.slow  # a server of its own; the local shards cover the logic
def test_videos_at_s3_urls_by_folder_and_by_list_are_read_in_place(
    shard_folder: tuple[Path, Path],
    tiny_clip_file: Path,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """`--input_dir s3://...` and URLs in `--input_list`: the files of the local run, byte for
    byte in their features; a rerun skips them (sizes and times from the store)."""
    s3, env = s3_client(s3_endpoint, monkeypatch)
    s3.mkdir("files")
    _, videos = shard_folder
    names = sorted(p.name for p in videos.glob("*.mp4"))[:3]
    for name in names:
        s3.put_file(str(videos / name), f"files/videos/sub/{name}")
    local = tmp_path / "local"
    local.mkdir()
    for name in names:
        (local / "sub").mkdir(exist_ok=True)
        (local / "sub" / name).symlink_to(videos / name)
    args = _clip_args(tiny_clip_file)
    here = run_vfe(*args, "--input_dir", str(local), "--output_dir", "here", cwd=tmp_path)
    there = run_vfe(*args, "--input_dir", "s3://files/videos", "--output_dir", "there",
                    cwd=tmp_path, env=env)  # fmt: skip
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    (tmp_path / "list.txt").write_text(
        "".join(f"s3://files/videos/sub/{name}\tid{n}\n" for n, name in enumerate(names))
    )
    listed = run_vfe(*args, "--input_list", "list.txt", "--output_dir", "listed",
                     cwd=tmp_path, env=env)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    for number, name in enumerate(names):
        stem = Path(name).stem
        with (
            np.load(tmp_path / "here" / "sub" / f"{stem}.npz") as a,
            np.load(tmp_path / "there" / "sub" / f"{stem}.npz") as b,
            np.load(tmp_path / "listed" / f"id{number}.npz") as c,
        ):
            np.testing.assert_array_equal(a["features"], b["features"])
            np.testing.assert_array_equal(a["features"], c["features"])
            provenance = json.loads(str(b["provenance"]))["video"]
        assert provenance["path"] == f"s3://files/videos/sub/{name}"
    again = run_vfe(*args, "--input_dir", "s3://files/videos", "--output_dir", "there",
                    cwd=tmp_path, env=env)  # fmt: skip
    assert "3 already done (skipped), 0 to extract" in again.stderr, again.stderr


RAISING_MODEL = """
import os

from vfe.backbones.openai_clip import CLIPBackbone

CALLS = []


class ClipThatBreaks(CLIPBackbone):
    name = "clip"

    def encode(self, samples):
        CALLS.append(len(samples))
        if len(CALLS) == 8 and os.environ.get("BREAK"):  # inside the second shard
            raise RuntimeError("injected: the run dies here")
        return super().encode(samples)
"""


def test_a_run_that_dies_mid_shard_keeps_finished_shards_and_leaves_nothing_else(
    shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path
):
    """Killed (here: an error) after the first shard: that shard is complete with its stats,
    the shard in hand leaves no output and no temporary; the same command redoes the rest."""
    shards, _ = shard_folder
    (tmp_path / "test_models.py").write_text(RAISING_MODEL)
    pattern = str(shards / "{00000..00002}.tar")
    args = [*_clip_args(tiny_clip_file), "--input_shards", pattern, "--output_dir", "out",
            "--batch_size", "16"]  # fmt: skip
    args[args.index("clip")] = "test_models.ClipThatBreaks"
    died = run_vfe(*args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "BREAK": "1"})
    assert died.returncode != 0 and "injected" in died.stderr, died.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["00000.stats.json", "00000.tar"]
    rerun = run_vfe(*args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert "1 already done (skipped), 2 to extract" in rerun.stderr, rerun.stderr
    assert "shards done 2, skipped 1; written 3, failed 1" in rerun.stderr
    args[args.index("test_models.ClipThatBreaks")] = "clip"  # another backbone: refused
    other = run_vfe(*args, cwd=tmp_path)
    assert other.returncode == 2, other.stderr
    assert "00000.stats.json was made with other settings (model: " in other.stderr
    redone = run_vfe(*args, "--overwrite", "changed", cwd=tmp_path)
    assert "0 already done (skipped), 3 to extract" in redone.stderr, redone.stderr
    stats = json.loads((out / "00000.stats.json").read_text())
    assert stats["settings"]["model"].endswith("CLIPBackbone")


@pytest.mark.parametrize("output_format", ["webdataset", "parquet"])
def test_pack_reads_a_folder_of_output_shards(
    output_format: str, shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path
):
    """`vfe pack` over output shards gives the HDF5 cache of the same videos as files, each
    dataset named by its key (UniVTG reads it by id)."""
    import h5py

    shards, videos = shard_folder
    pattern = str(shards / "{00000..00002}.tar")
    args = _clip_args(tiny_clip_file)
    run_vfe(*args, "--input_dir", str(videos), "--output_dir", "files", cwd=tmp_path)
    run_vfe(*args, "--input_shards", pattern, "--output_format", output_format,
            "--output_dir", "shards", cwd=tmp_path)  # fmt: skip
    for folder in ("files", "shards"):
        packed = run_in_process(["pack", folder, f"{folder}.h5"], tmp_path)
        assert packed.returncode == 0 and "packed 5 files" in packed.stderr, packed.stderr
    with h5py.File(tmp_path / "files.h5") as a, h5py.File(tmp_path / "shards.h5") as b:
        assert sorted(a) == sorted(b) == sorted(p.stem for p in videos.glob("*.mp4"))
        for name in a:
            np.testing.assert_array_equal(a[name][()], b[name][()])
            np.testing.assert_array_equal(a[name].attrs["timestamps"], b[name].attrs["timestamps"])


def test_search_and_text_like_read_a_folder_of_output_shards(
    shard_folder: tuple[Path, Path], text_clip_file: Path, tmp_path: Path
):
    """`vfe search` over output shards ranks the clips as over the same videos' files (the same
    scores and times, each hit named by its shard and key); `vfe text --like` finds the folder's
    model in the shards' provenance; its report shows each hit's frame, read from the input
    shard."""
    import re

    from vfe.text.command import folder_model

    shards, videos = shard_folder
    args = [*_clip_args(text_clip_file)[:-2], "--data.num_workers", "0", "--clip_len", "0.5"]
    run_vfe(*args, "--input_dir", str(videos), "--output_dir", "files", cwd=tmp_path)
    run_vfe(*args, "--input_shards", str(shards / "{00000..00002}.tar"),
            "--output_dir", "shards", cwd=tmp_path)  # fmt: skip
    hits = {}
    for folder in ("files", "shards"):
        result = run_in_process(["search", "a dog", folder, "--top_k", "6", "--json"], tmp_path)
        assert result.returncode == 0, result.stderr
        hits[folder] = json.loads(result.stdout)
    for a, b in zip(hits["files"], hits["shards"], strict=True):
        assert (a["start_seconds"], a["score"]) == (b["start_seconds"], b["score"])
        assert Path(a["path"]).stem == Path(b["path"]).stem  # the same video
    assert hits["shards"][0]["path"].startswith(str(shards))  # its shard member's name
    assert folder_model(tmp_path / "shards") == folder_model(tmp_path / "files")
    # The report's thumbnails: the frames of the same videos, read from the input shards.
    thumbnails = {}
    for folder in ("files", "shards"):
        page = tmp_path / f"{folder}.html"
        report = run_in_process(["search", "a dog", folder, "--top_k", "3", "--report", str(page)],
                                tmp_path)  # fmt: skip
        assert report.returncode == 0 and "no thumbnail" not in report.stderr, report.stderr
        thumbnails[folder] = re.findall(r'<img src="(data:[^"]+)"', page.read_text())
    assert len(thumbnails["shards"]) == 3 and thumbnails["shards"] == thumbnails["files"]


def test_the_python_api_extracts_shards_keyed_by_sample(
    shard_folder: tuple[Path, Path], tiny_clip_file: Path, tmp_path: Path
):
    """`vfe.extract(input_shards=...)`: the arrays of `vfe predict`'s output shards, by key; a
    sample that fails raises unless `allow_failures`."""
    import vfe
    from vfe.errors import VfeError

    shards, videos = shard_folder
    options = {"arch": "custom", "weights": str(tiny_clip_file)}
    pattern = str(shards / "{00000..00002}.tar")
    with pytest.raises(VfeError, match=r"1 video\(s\) failed: 00001/000000003: no video member"):
        vfe.extract(input_shards=pattern, model_options=options)
    got = vfe.extract(input_shards=pattern, model_options=options, allow_failures=True)
    files = vfe.extract(str(videos), model_options=options)
    assert sorted(got) == sorted(Path(name).stem for name in files)
    for name, arrays in files.items():
        np.testing.assert_array_equal(got[Path(name).stem]["features"], arrays["features"])
    with pytest.raises(VfeError, match="videos or input_shards=, one of them"):
        vfe.extract(str(videos), input_shards=pattern)


def test_an_object_key_that_would_leave_the_output_folder_is_refused():
    """Keys come from data: `a/../../evil.mp4` under an `--input_dir` URL stops the listing
    with a one-line error naming it, before anything is written."""
    import fsspec

    from vfe.data.paths import find_videos
    from vfe.errors import VfeError

    memory = fsspec.filesystem("memory")
    memory.pipe("/vfe-test-keys/a/../../evil.mp4", b"x")
    memory.pipe("/vfe-test-keys/ok.mp4", b"y")
    with pytest.raises(VfeError, match=r"'a/\.\./\.\./evil\.mp4' has an empty, '\.' or '\.\.'"):
        find_videos("memory://vfe-test-keys")
    memory.rm("/vfe-test-keys", recursive=True)


def test_the_awkward_files_from_a_shard_equal_the_same_files_on_disk(
    real_world_videos: dict[str, Path], tiny_clip_file: Path, tmp_path: Path
):
    """Edit-list cuts, MPEG-TS, VFR, 29.97 fps, Xvid AVI, ... decoded from memory (a shard
    sample) or read in place at a URL give the features and timestamps of the same files read
    from disk."""
    folder = tmp_path / "files"
    folder.mkdir()
    with webdataset.TarWriter(str(tmp_path / "corpus.tar")) as sink:
        for name, path in real_world_videos.items():
            key = Path(name).stem.replace(".", "_")
            (folder / f"{key}{path.suffix}").symlink_to(path)
            sink.write({"__key__": key, path.suffix.lstrip(".").lower(): path.read_bytes()})
    args = _clip_args(tiny_clip_file)
    files = run_vfe(*args, "--input_dir", str(folder), "--output_dir", "from_files", cwd=tmp_path)
    shard = run_vfe(*args, "--input_shards", str(tmp_path / "corpus.tar"),
                    "--output_dir", "from_shard", cwd=tmp_path)  # fmt: skip
    assert files.returncode == shard.returncode, shard.stderr
    from_shard = _read_output_shard(tmp_path / "from_shard" / "corpus.tar")
    written = sorted(p.stem for p in (tmp_path / "from_files").glob("*.npz"))
    assert sorted(from_shard) == written and len(written) >= 6
    for key in written:
        with np.load(tmp_path / "from_files" / f"{key}.npz") as saved:
            for name in ("features", "timestamps", "fps"):
                np.testing.assert_array_equal(from_shard[key][name], saved[name], err_msg=key)
    # Read in place at a URL (`file://`: fsspec's files, each open its own, as on a bucket;
    # its memory filesystem shares one position between opens): through vfe's storage reader,
    # whose reads and seeks PyAV drives, the same features again.
    in_place = run_vfe(*args, "--input_dir", folder.resolve().as_uri(),
                       "--output_dir", "in_place", cwd=tmp_path)  # fmt: skip
    assert in_place.returncode == files.returncode, in_place.stderr
    assert sorted(p.stem for p in (tmp_path / "in_place").glob("*.npz")) == written
    for key in written:
        with (
            np.load(tmp_path / "from_files" / f"{key}.npz") as saved,
            np.load(tmp_path / "in_place" / f"{key}.npz") as read_in_place,
        ):
            for name in ("features", "timestamps", "fps"):
                np.testing.assert_array_equal(read_in_place[name], saved[name], err_msg=key)
