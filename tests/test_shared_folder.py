"""Runs that share an output folder: a live run's work is never removed, jobs divide the videos
(`--part I/N`, SLURM arrays, or claims as they go), and a run never ends with exit 0 while a
video it planned is missing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import extract

from vfe.bench.synthetic import write_video
from vfe.errors import VfeError
from vfe.output.parts import PARTS_DIR_NAME, remove_stale_parts
from vfe.planning import owners
from vfe.planning.claims import Claims, claim_file, holder_of, release_claims_of
from vfe.planning.job_part import JobPart, job_part, parse_part, select_part

SLOW_RANK_ONE = '''
import time

from vfe.backbones.openai_clip import CLIPBackbone


class SlowRankOne(CLIPBackbone):
    """Rank 1 works slowly, so rank 0's part of a split video waits for it."""

    name = "clip"

    def encode(self, samples):
        if self.global_rank == 1:
            time.sleep(0.1)
        return super().encode(samples)
'''


def tiny_clip_args(weights: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vfe", "predict", "--model", "clip", "--model.arch", "custom",
        "--model.weights", str(weights), "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--data.num_workers", "0", *extra,
    ]  # fmt: skip


def quiet_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    return {**env, "PYTHONWARNINGS": "ignore", **extra}


@pytest.mark.slow
def test_a_second_run_keeps_a_live_runs_parts(tiny_clip_file: Path, tmp_path: Path):
    """The reproduction: a 2-rank run has left the first part of a split video; a second run
    into the same folder starts and finishes meanwhile. Its start used to remove every run's
    parts, and the first run then ended with exit 0 and no `long.npz`."""
    from vfe.backbones.openai_clip import CLIPBackbone

    (tmp_path / "test_models.py").write_text(SLOW_RANK_ONE)
    write_video(tmp_path / "in" / "long.mp4", num_frames=300, height=48, width=64, seed=5)
    write_video(tmp_path / "in" / "short.mp4", num_frames=10, seed=6)
    write_video(tmp_path / "other" / "other.mp4", num_frames=10, seed=7)
    args = tiny_clip_args(tiny_clip_file, "--input_dir", "in", "--output_dir", "out")
    args[args.index("clip")] = "test_models.SlowRankOne"
    args += ["--data.min_segment_seconds", "2", "--batch_size", "4"]
    args += ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = quiet_env(PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    first = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((tmp_path / "out" / PARTS_DIR_NAME).glob("*/long.mp4/rank*.npz")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGSTOP)  # both ranks hold still while the second run works
    try:
        second = extract(
            CLIPBackbone(arch="custom", weights=str(tiny_clip_file)),
            tmp_path / "other",
            tmp_path / "out",
        )
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.total_failed == 0 and (tmp_path / "out" / "other.npz").exists()
    assert list((tmp_path / "out" / PARTS_DIR_NAME).glob("*/long.mp4/rank*.npz"))  # kept
    _, stderr = first.communicate(timeout=300)
    stderr = stderr.decode()
    assert first.returncode == 0, stderr
    assert "written 2, skipped 0, failed 0" in stderr
    with np.load(tmp_path / "out" / "long.npz") as saved:
        assert saved["features"].shape == (6, 32)
    assert not (tmp_path / "out" / PARTS_DIR_NAME).exists()
    assert not (tmp_path / "out" / owners.RUNS_DIR_NAME).exists()  # both runs ended


def test_a_video_whose_write_was_lost_is_unfinished_and_fails_the_run(
    video_dir: Path, tiny_clip_file: Path, tmp_path: Path, monkeypatch
):
    """Whatever loses a planned video (parts removed, a write lost), the end-of-run audit
    names it, records it in failures.jsonl and the run fails."""
    from vfe.backbones.openai_clip import CLIPBackbone
    from vfe.output.writer import FeatureWriter

    save = FeatureWriter._save

    def lose_the_short_one(self, name, video):
        if video.relative_path != "nested/short.mp4":
            save(self, name, video)

    monkeypatch.setattr(FeatureWriter, "_save", lose_the_short_one)
    writer = extract(CLIPBackbone(arch="custom", weights=str(tiny_clip_file)), video_dir, tmp_path)
    assert writer.total_failed == 1
    (record,) = [json.loads(line) for line in (tmp_path / "failures.jsonl").open()]
    assert record["relative_path"] == "nested/short.mp4" and record["stage"] == "unfinished"
    assert record["run"] and "no .npz and no failure recorded" in record["error"]
    assert (tmp_path / "moving.npz").exists()


def test_parts_that_never_merged_are_named_as_such(tmp_path: Path):
    from vfe.data.paths import VideoEntry
    from vfe.data.work_plan import PlannedRun
    from vfe.output.audit import audit_run
    from vfe.output.parts import part_folder

    videos = [
        VideoEntry(Path("/in/a.mp4"), "a.mp4", 10),
        VideoEntry(Path("/in/b.mp4"), "b.mp4", 10),
    ]
    plan = PlannedRun(videos, [("m",), ("m",)], {"m": 0}, "run-1", [2], [[]])
    (tmp_path / "b.npz").write_bytes(b"written")
    folder = part_folder(tmp_path, "run-1", "a.mp4")
    folder.mkdir(parents=True)
    (folder / "rank0.npz").write_bytes(b"a part")
    recorded = []
    audit = audit_run(plan, {"m": tmp_path}, {"m": 1}, lambda name, f: recorded.append(f))
    (failure,) = audit.unfinished
    assert recorded == [failure] and failure.relative_path == "a.mp4"
    assert "parts from several ranks never merged" in failure.error


def test_a_run_is_live_while_its_process_runs_and_gone_after(tmp_path: Path, monkeypatch):
    owners.register([tmp_path], owners.this_run("me"))
    assert owners.run_is_live(tmp_path, "me")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = owners.RunOwner("dead", owners.host_label(), sleeper.pid, None, time.time())
    owners.register([tmp_path], dead)
    assert owners.run_is_live(tmp_path, "dead")  # even if it sends no heartbeat (paused)
    sleeper.kill()
    sleeper.wait()
    assert not owners.run_is_live(tmp_path, "dead")
    # On another host only the heartbeat tells.
    far = owners.RunOwner("far", "elsewhere", 1, None, time.time())
    owners.register([tmp_path], far)
    assert owners.run_is_live(tmp_path, "far")
    old = time.time() - owners.STALE_SECONDS - 1
    os.utime(owners.owner_file(tmp_path, "far"), (old, old))
    assert not owners.run_is_live(tmp_path, "far")
    assert not owners.run_is_live(tmp_path, "never-registered")
    owners.forget_gone_runs(tmp_path)
    assert owners.runs_recorded(tmp_path) == ["me"]


def test_a_pid_reused_by_another_process_is_not_the_run(tmp_path: Path):
    me = owners.this_run("me")
    assert me.process_start is not None  # Linux: /proc
    owners.register([tmp_path], owners.RunOwner("old", me.host, me.pid, "1", me.started_seconds))
    assert not owners.run_is_live(tmp_path, "old")


def test_stale_parts_are_removed_and_a_live_runs_are_kept(tmp_path: Path):
    for run in ("live", "gone"):
        folder = tmp_path / PARTS_DIR_NAME / run / "v.mp4"
        folder.mkdir(parents=True)
        (folder / "rank0.npz").write_bytes(b"part")
    owners.register([tmp_path], owners.this_run("live"))
    remove_stale_parts(tmp_path)
    assert (tmp_path / PARTS_DIR_NAME / "live" / "v.mp4" / "rank0.npz").exists()
    assert not (tmp_path / PARTS_DIR_NAME / "gone").exists()


def test_claims_leave_a_video_to_the_live_job_that_holds_it(tmp_path: Path):
    out = {"clip": tmp_path / "clip", "slowfast": tmp_path / "slowfast"}
    both = ("clip", "slowfast")
    owners.register(list(out.values()), owners.this_run("one"))
    owners.register(list(out.values()), owners.this_run("two"))
    one = Claims(out, "one")
    two = Claims(out, "two")
    assert one.claim("a/v.mp4", both) == both
    assert one.claim("a/v.mp4", both) == both  # its own claim (another segment of the video)
    assert two.claim("a/v.mp4", both) == ()  # left to the live job "one"
    assert holder_of(out["clip"], "a/v.mp4") == "one"
    assert claim_file(out["clip"], "a/v.mp4") == out["clip"] / ".vfe-claims" / "a" / "v.claim"
    # Only one backbone held elsewhere: the video is left whole, and nothing stays claimed.
    assert one.claim("b.mp4", ("slowfast",)) == ("slowfast",)
    assert two.claim("b.mp4", both) == ()
    assert holder_of(out["clip"], "b.mp4") is None
    # Written meanwhile by the holder, then released: the other job does not write it again.
    (out["clip"] / "a").mkdir(parents=True, exist_ok=True)
    (out["clip"] / "a" / "v.npz").write_bytes(b"written")
    (out["slowfast"] / "a").mkdir(parents=True, exist_ok=True)
    (out["slowfast"] / "a" / "v.npz").write_bytes(b"written")
    one.release("a/v.mp4", both)
    assert two.claim("a/v.mp4", both) == ()
    assert holder_of(out["clip"], "a/v.mp4") is None
    # The holder is gone: its claim is taken over.
    assert one.claim("c.mp4", both) == both
    owners.unregister(list(out.values()), "one")
    assert two.claim("c.mp4", both) == both and holder_of(out["slowfast"], "c.mp4") == "two"
    for folder in out.values():  # what the run's end does (`vfe.output.audit.end_ownership`)
        release_claims_of(folder, lambda holder: holder == "two")
    assert not (out["clip"] / ".vfe-claims").exists()


def test_a_file_another_job_wrote_after_the_listing_is_left_alone_whatever_its_time(
    tmp_path: Path,
):
    """The kernel stamps files from a coarse clock: a file written just after this run listed
    the folder can carry an earlier time. Written since the listing (new, or replacing the file
    an --overwrite run saw), it is left to the job that wrote it; the file seen is redone."""
    from vfe.data.paths import VideoEntry
    from vfe.planning.resume import plan_run

    out = {"m": tmp_path / "m"}
    out["m"].mkdir()
    videos = [VideoEntry(Path(f"/in/{n}.mp4"), f"{n}.mp4", 10) for n in ("new", "old", "kept")]
    for name in ("old", "kept"):
        (out["m"] / f"{name}.npz").write_bytes(b"made before")
    owners.register([out["m"]], owners.this_run("me"))
    listing = plan_run(videos, out, True, {"m": {}})  # --overwrite: all three to do
    assert [video.relative_path for video in listing.todo] == ["new.mp4", "old.mp4", "kept.mp4"]
    claims = Claims(out, "me", listing.seen)
    long_ago = (1_000_000_000, 1_000_000_000)  # 1970: older than any run's start
    for name in ("new", "old"):  # another job writes these meanwhile (a new file each)
        (out["m"] / f".{name}.tmp").write_bytes(b"another job's")
        os.utime(out["m"] / f".{name}.tmp", long_ago)
        os.replace(out["m"] / f".{name}.tmp", out["m"] / f"{name}.npz")
    assert claims.claim("new.mp4", ("m",)) == ()
    assert claims.claim("old.mp4", ("m",)) == ()
    assert claims.claim("kept.mp4", ("m",)) == ("m",)  # the file it saw: replaced as asked
    assert holder_of(out["m"], "new.mp4") is None and holder_of(out["m"], "kept.mp4") == "me"


@pytest.mark.parametrize(
    ("text", "problem"),
    [("3/3", "I must be 0 to N-1"), ("1/0", "N at least 1"), ("half", "is not I/N .* or 'all'")],
)
def test_bad_parts_are_one_line_errors(text, problem):
    with pytest.raises(VfeError, match=problem):
        parse_part(text)


def test_a_slurm_array_task_is_a_part():
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert job_part(None, env) == JobPart(2, 4, "SLURM array")
    assert job_part("0/2", env) == JobPart(0, 2, "--part")  # --part wins
    assert job_part(None, {}) is None
    assert job_part("all", env) is None  # every video, e.g. an array over settings
    with pytest.raises(VfeError, match="pass --part I/N"):
        job_part(None, {**env, "SLURM_ARRAY_TASK_ID": "9"})


def test_parts_cover_every_video_once_and_balance_by_size():
    sizes = [100, 1, 1, 1, 50, 50, 2, 3, 97, 5]
    parts = [select_part(sizes, JobPart(i, 3, "--part")) for i in range(3)]
    assert sorted(i for part in parts for i in part) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in part) for part in parts]
    assert max(loads) - min(loads) <= max(sizes) and all(part == sorted(part) for part in parts)


@pytest.fixture(scope="module")
def thirty_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("thirty")
    for number in range(30):
        write_video(folder / f"v{number:02d}.mp4", num_frames=3 + number % 4, height=32, width=32,
                    seed=number)  # fmt: skip
    return folder


def _written(stderr: str) -> int:
    line = next(line for line in stderr.splitlines() if "written " in line and "skipped" in line)
    return int(line.split("written ", 1)[1].split(",", 1)[0])


def _start_jobs(commands: list[list[str]], cwd: Path, envs: list[dict]) -> list[tuple[int, str]]:
    processes = [
        subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for command, env in zip(commands, envs, strict=True)
    ]
    return [(process.wait(timeout=600), process.communicate()[1]) for process in processes]


@pytest.mark.slow
@pytest.mark.parametrize("split", ["--part", "none"], ids=["parts", "together"])
def test_three_jobs_into_one_folder_write_every_video_once(
    split, thirty_videos: Path, tiny_clip_file: Path, tmp_path: Path
):
    """Three jobs over 30 videos into one folder: with `--part i/3` (one as a SLURM array
    task) or without (started together, sharing by claims). Every video is written exactly
    once and equals one run's output; every job exits 0."""
    from vfe.backbones.openai_clip import CLIPBackbone

    one_run = tmp_path / "one"
    extract(CLIPBackbone(arch="custom", weights=str(tiny_clip_file)), thirty_videos, one_run)
    base = tiny_clip_args(tiny_clip_file, "--input_dir", str(thirty_videos), "--output_dir", "out")
    commands, envs = [], []
    for index in range(3):
        if split == "--part" and index < 2:
            commands.append([*base, "--part", f"{index}/3"])
            envs.append(quiet_env())
        elif split == "--part":
            commands.append(base)
            slurm = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10"}
            envs.append(quiet_env(SLURM_ARRAY_TASK_COUNT="3", **slurm))
        else:
            commands.append(base)
            envs.append(quiet_env())
    results = _start_jobs(commands, tmp_path, envs)
    for code, stderr in results:
        assert code == 0, stderr
    if split == "--part":
        assert "part 2/3 (SLURM array): 10 of the 30 videos" in results[2][1]
    assert sum(_written(stderr) for _, stderr in results) == 30  # none written twice
    runs = set()
    for number in range(30):
        with (
            np.load(tmp_path / "out" / f"v{number:02d}.npz") as saved,
            np.load(one_run / f"v{number:02d}.npz") as reference,
        ):
            np.testing.assert_allclose(saved["features"], reference["features"], atol=1e-6)
            np.testing.assert_array_equal(saved["timestamps"], reference["timestamps"])
            runs.add(json.loads(str(saved["provenance"]))["run"])
    assert len(runs) == (3 if split == "--part" else len([r for r in results if _written(r[1])]))
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == [] and not (tmp_path / "out" / "failures.jsonl").exists()


def test_temporaries_of_a_live_process_are_kept_however_old(tmp_path: Path):
    """A run paused for an hour still owns its temporaries; a dead one's go at once, and one
    from another host once it is old."""
    from vfe.output.npz import STALE_TEMPORARY_SECONDS, remove_stale_temporaries

    host = owners.host_label()
    sleeper = subprocess.Popen([sys.executable, "-c", "pass"])
    sleeper.wait()
    names = {
        "live": f".a.npz.{host}-{os.getpid()}.k2j3h4.vfe-tmp",
        "dead": f".b.npz.{host}-{sleeper.pid}.k2j3h4.vfe-tmp",
        "far, old": ".c.npz.node1_cluster-12.k2j3h4.vfe-tmp",
        "far, new": ".d.npz.node1_cluster-12.k2j3h4.vfe-tmp",
    }
    old = time.time() - STALE_TEMPORARY_SECONDS - 60
    for label, name in names.items():
        (tmp_path / name).write_bytes(b"half a file")
        if label != "far, new":
            os.utime(tmp_path / name, (old, old))
    # What a run killed while claiming leaves in the claims folder goes the same way.
    claims = tmp_path / ".vfe-claims" / "a"
    claims.mkdir(parents=True)
    (claims / f".v.claim.{host}-{sleeper.pid}.x1y2z3.vfe-tmp").write_text("run")
    remove_stale_temporaries(tmp_path)
    kept = sorted(label for label, name in names.items() if (tmp_path / name).exists())
    assert kept == ["far, new", "live"]
    release_claims_of(tmp_path, lambda holder: False)
    assert not (tmp_path / ".vfe-claims").exists()


@pytest.mark.parametrize("other_job", ["writes it", "dies"])
def test_the_audit_waits_for_a_video_another_live_job_holds(other_job, tmp_path: Path, monkeypatch):
    """A video another job claimed is waited for while that job lives: written by it, it is
    the run's too; left behind by a job that died, it is unfinished."""
    import threading

    from vfe.data.paths import VideoEntry
    from vfe.data.work_plan import PlannedRun
    from vfe.output import audit as audit_module

    monkeypatch.setattr(audit_module, "POLL_SECONDS", 0.05)
    plan = PlannedRun([VideoEntry(Path("/in/v.mp4"), "v.mp4", 10)], [("m",)], {"m": 0}, "me",
                      [1], [[]])  # fmt: skip
    owners.register([tmp_path], owners.this_run("other"))
    other = Claims({"m": tmp_path}, "other")
    assert other.claim("v.mp4", ("m",)) == ("m",)

    def finish() -> None:
        time.sleep(0.3)
        if other_job == "writes it":
            (tmp_path / "v.npz").write_bytes(b"written")
            other.release("v.mp4", ("m",))
        else:
            owners.unregister([tmp_path], "other")

    thread = threading.Thread(target=finish)
    thread.start()
    recorded = []
    started = time.monotonic()
    result = audit_module.audit_run(
        plan, {"m": tmp_path}, {"m": 0}, lambda name, failure: recorded.append(failure)
    )
    thread.join()
    assert time.monotonic() - started >= 0.25  # it waited
    if other_job == "writes it":
        assert recorded == [] and result.written_elsewhere == {"m": 1}
    else:
        (failure,) = recorded
        assert failure.relative_path == "v.mp4" and failure.stage == "unfinished"
