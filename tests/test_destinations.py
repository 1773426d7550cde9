"""Writing into folders others share: names from data stay inside the destination, temporaries
cannot be redirected by a planted link, nothing existing is replaced unasked, every output is
seen by the commands that read folders, and nothing waits forever."""

import hashlib
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from vfe.destinations import RESERVED_NAMES, path_inside, write_atomically
from vfe.errors import VfeError

PART = "has an empty, '.' or '..' part"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../escaped", "'..' part"),
        ("a/../../b", "'..' part"),
        ("/etc/passwd", "empty or absolute"),
        ("", "empty or absolute"),
        ("a//b", "empty"),
        ("./a", PART),
        (".vfe-parts/x", "a folder vfe keeps for itself"),
    ],
)
def test_names_from_data_cannot_leave_the_folder(name, problem, tmp_path: Path):
    with pytest.raises(VfeError, match=re.escape(problem)) as raised:
        path_inside(tmp_path, name, "qid")
    assert str(raised.value).startswith(f"qid {name!r}") and "\n" not in str(raised.value)


def test_a_name_through_a_link_out_of_the_folder_is_refused(tmp_path: Path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(VfeError, match="leads out of"):
        path_inside(tmp_path / "out", "link/x.npz", "HDF5 dataset name")
    assert path_inside(tmp_path / "out", "a/b.npz", "x") == tmp_path / "out" / "a" / "b.npz"
    with pytest.raises(VfeError, match="holds a '/'"):
        path_inside(tmp_path / "out", "a/b.npz", "qid", folders=False)


def test_unpack_refuses_names_that_leave_the_folder(tmp_path: Path):
    import h5py

    from vfe.output.pack import unpack

    with h5py.File(tmp_path / "evil.h5", "w") as packed:
        packed.create_group("..").create_group("..").create_dataset("escaped", data=np.zeros(2))
        packed.create_dataset("fine", data=np.zeros(2))
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(VfeError, match=re.escape(f"HDF5 dataset name '../../escaped' {PART}")):
        unpack(tmp_path / "evil.h5", tmp_path / "a" / "b" / "out")
    assert not list(tmp_path.rglob("*.npz"))  # nothing written, not even the fine one


def test_text_refuses_qids_that_leave_the_folder(tmp_path: Path, capsys):
    from vfe.text.command import main

    queries = tmp_path / "q.jsonl"
    for qid in ("../../escaped_qid", "a/b"):
        queries.write_text(json.dumps({"qid": qid, "query": "a dog"}) + "\n")
        with pytest.raises(SystemExit) as exit_:
            main(["--like", str(tmp_path), "--queries", str(queries), "--prefix", "",
                  "--output_dir", str(tmp_path / "textout" / "q")])  # fmt: skip
        assert exit_.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith(f"vfe text: error: qid {qid!r}") and error.count("\n") == 1
    assert not list(tmp_path.rglob("*.npz")) and not (tmp_path / "textout").exists()


def test_an_input_whose_output_would_be_vfe_s_own_folder_is_refused(tmp_path: Path):
    from vfe.data.paths import find_videos

    (tmp_path / ".vfe-parts").mkdir()
    (tmp_path / ".vfe-parts" / "v.mp4").write_bytes(b"x")
    with pytest.raises(VfeError, match="a folder vfe keeps for itself"):
        find_videos(tmp_path)


def test_outputs_in_hidden_folders_are_seen_and_vfe_s_own_are_not(tmp_path: Path):
    from vfe.data.paths import feature_files

    for name in (
        ".cam/a.npz",
        "b.npz",
        "sub/.hidden/c.npz",
        *(f"{r}/x.npz" for r in RESERVED_NAMES),
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".b.npz.host-1.abc.vfe-tmp").write_bytes(b"x")
    found = [path.relative_to(tmp_path).as_posix() for path in feature_files(tmp_path)]
    assert found == [".cam/a.npz", "b.npz", "sub/.hidden/c.npz"]


def test_the_reserved_names_are_those_vfe_uses():
    from vfe.output.parts import PARTS_DIR_NAME
    from vfe.planning.claims import CLAIMS_DIR_NAME
    from vfe.planning.owners import RUNS_DIR_NAME
    from vfe.search.index import INDEX_DIR_NAME

    assert {PARTS_DIR_NAME, CLAIMS_DIR_NAME, RUNS_DIR_NAME, INDEX_DIR_NAME} == RESERVED_NAMES


def test_planted_links_at_the_old_temporary_names_are_never_followed(tmp_path: Path, monkeypatch):
    """Every writer that used a predictable temporary name (the .npz writer, `vfe text`, the
    sha256 cache, `vfe pack`) now creates its temporary exclusively: a link planted at each old
    name leaves its target untouched."""
    from vfe.output.npz import save_npz_atomically
    from vfe.output.pack import pack
    from vfe.planning.provenance import sha256_of_file
    from vfe.text.command import write_query_file

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "shared"
    out.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"weights")
    stat = weights.stat()
    key = f"{weights.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}"
    cached = tmp_path / "cache" / "vfe" / "sha256" / hashlib.sha256(key.encode()).hexdigest()
    cached.parent.mkdir(parents=True)
    feats = tmp_path / "feats"
    feats.mkdir()
    np.savez(feats / "a.npz", features=np.ones((1, 2), np.float32))
    old_names = [
        out / f".v.npz.{os.getpid()}.vfe-tmp",  # save_npz_atomically
        out / ".qid1.npz.tmp",  # vfe text
        cached.with_suffix(f".{os.getpid()}.partial"),  # the sha256 cache
        out / "packed.h5.partial",  # vfe pack
    ]
    for name in old_names:
        name.symlink_to(victim)
    save_npz_atomically(out / "v.npz", {"features": np.ones((2, 3), np.float32)})
    write_query_file(out / "qid1.npz", np.ones((3, 4)), np.ones(4), {"qid": "1"})
    assert sha256_of_file(weights) == hashlib.sha256(b"weights").hexdigest()
    pytest.importorskip("h5py")
    assert pack(feats, out / "packed.h5") == 1
    assert victim.read_text() == "precious"
    assert all(name.is_symlink() for name in old_names)
    assert np.load(out / "v.npz")["features"].shape == (2, 3)


def test_pack_refuses_an_existing_file_unless_asked_and_leaves_no_partial(tmp_path: Path):
    pytest.importorskip("h5py")
    from vfe.output.pack import main

    (tmp_path / "feats").mkdir()
    np.savez(tmp_path / "feats" / "a.npz", features=np.ones((2, 3), np.float32))
    (tmp_path / "packed.h5").write_bytes(b"someone's packed features")
    args = ["pack", str(tmp_path / "feats"), str(tmp_path / "packed.h5")]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert (tmp_path / "packed.h5").read_bytes() == b"someone's packed features"
    main([*args, "--overwrite"])
    import h5py

    with h5py.File(tmp_path / "packed.h5") as packed:
        assert packed["a"].shape == (2, 3)
    np.savez(tmp_path / "feats" / "b.npz", other=np.ones(1))  # no "features": pack fails
    with pytest.raises(SystemExit):
        main([*args, "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats", "packed.h5"]


def test_a_failed_atomic_write_leaves_nothing(tmp_path: Path):
    def fail(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(tmp_path / "x.npz", fail)
    assert list(tmp_path.iterdir()) == []


def test_search_finds_the_source_by_escaped_name_and_video_suffix(tmp_path: Path, capsys):
    from vfe.search.command import source_of

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("talk.info.json", "talk.mp4", "take1.mp4", "take[1].mkv", "two.mp4", "two.webm"):
        (inputs / name).write_bytes(b"x")
    assert source_of({"features_file": "talk.npz"}, inputs) == str(inputs / "talk.mp4")
    assert source_of({"features_file": "take[1].npz"}, inputs) == str(inputs / "take[1].mkv")
    assert capsys.readouterr().err == ""
    assert source_of({"features_file": "two.npz"}, inputs) == str(inputs / "two.mp4")
    assert "2 videos match two.npz under --input_dir (two.mp4, two.webm)" in capsys.readouterr().err
    assert source_of({"features_file": "none.npz"}, inputs) is None


def test_two_searches_rebuilding_one_index_at_once_both_succeed(tmp_path: Path, monkeypatch):
    """Both build their own index in a private folder; the one that finds a current index in
    place keeps it (was: rmtree + os.replace crashed the loser)."""
    from vfe.search import index as index_module

    folder = tmp_path / "feats"
    folder.mkdir()
    for number in range(3):
        np.savez(
            folder / f"v{number}.npz",
            features=np.eye(3, 4, number, dtype=np.float32),
            timestamps=np.array([[0.0, 2.0], [2.0, 4.0], [4.0, 5.0]]),
            provenance=np.array(json.dumps({"model": "m", "arch": "a", "weights_sha256": "s"})),
        )
    index_module.load_index(folder)  # an outdated index in place
    np.savez(
        folder / "v0.npz",
        features=np.ones((3, 4), np.float32),
        timestamps=np.array([[0.0, 2.0], [2.0, 4.0], [4.0, 5.0]]),
        provenance=np.array(json.dumps({"model": "m", "arch": "a", "weights_sha256": "s"})),
    )
    both_built = threading.Barrier(2, timeout=60)
    swap = index_module._swap_in

    def swap_together(building, index_dir, digest):
        both_built.wait()  # both have built before either swaps
        swap(building, index_dir, digest)

    monkeypatch.setattr(index_module, "_swap_in", swap_together)
    results, errors = [], []

    def search():
        try:
            results.append(index_module.load_index(folder))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=search) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 2
    for result in results:
        assert result.features.shape == (9, 4)
        np.testing.assert_allclose(result.features[0], np.full(4, 0.5))
    leftovers = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert leftovers == [".vfe-search"]


def test_a_decode_stream_whose_close_raises_hands_over_the_error():
    """Was: the thread never handed over its end marker and the consumer waited forever."""
    from vfe.data.streams import in_threads

    class CloseFails:
        def __init__(self):
            self.items = iter([1, 2])

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.items)

        def close(self):
            raise OSError("the decoder could not be closed")

    received = []
    with pytest.raises(OSError, match="could not be closed"):
        for value in in_threads([CloseFails(), iter([3])]):
            received.append(value)
    assert 1 in received and 2 in received


def test_the_api_gives_videos_of_one_name_their_own_ids(
    tiny_clip_file, tmp_path: Path, monkeypatch
):
    """Also inside a SLURM array task: the API extracts every video it is given."""
    from vfe.api import extract
    from vfe.bench.synthetic import write_video

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")

    first = write_video(tmp_path / "a" / "x.mp4", 30, seed=1)
    second = write_video(tmp_path / "b" / "x.mp4", 55, seed=2)
    options = {"clip": {"arch": "custom", "weights": str(tiny_clip_file)}}
    results = extract([str(first), second], model_options=options)
    assert set(results) == {str(first), str(second)}
    assert results[str(first)]["features"].shape == (1, 32)
    assert results[str(second)]["features"].shape == (2, 32)


@pytest.mark.slow
def test_the_other_rank_exits_3_when_rank_0_dies(tiny_clip_file: Path, tmp_path: Path):
    """Was: the surviving rank's heartbeat to the store rank 0 hosted raised in
    write_on_batch_end, a traceback and exit 4 instead of a lost rank's 3."""
    import signal

    from test_ranks import launch_two_ranks_by_hand, vfe_command

    from vfe.bench.synthetic import write_video

    (tmp_path / "test_models.py").write_text(RANK_ZERO_DIES)
    write_video(tmp_path / "in" / "a.mp4", num_frames=20, seed=1)
    write_video(tmp_path / "in" / "b.mp4", num_frames=400, seed=2)
    args = vfe_command(
        "test_models.RankZeroDies", tiny_clip_file, "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--writer.rank_timeout_seconds", "5",
    )  # fmt: skip
    rank0, rank1 = launch_two_ranks_by_hand(args, tmp_path)
    rank0.communicate(timeout=300)
    _, stderr = rank1.communicate(timeout=120)
    stderr = stderr.decode()
    assert rank0.returncode == -signal.SIGKILL
    assert rank1.returncode == 3, stderr
    assert "rank 0, which holds the run's records, does not answer" in stderr
    assert "Traceback" not in stderr


RANK_ZERO_DIES = '''
import os
import signal
import time

from vfe.backbones.openai_clip import CLIPBackbone


class RankZeroDies(CLIPBackbone):
    """Rank 0 is killed after its first batch (as by the OOM killer); rank 1 works on."""

    name = "clip"

    def encode(self, samples):
        if self.global_rank == 0 and getattr(self, "batches", 0) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        self.batches = getattr(self, "batches", 0) + 1
        if self.global_rank == 1:
            time.sleep(0.2)
        return super().encode(samples)
'''
