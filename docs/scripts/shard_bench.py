"""Many tiny videos as shards vs as files (docs/benchmarks.md, "Shards").

Writes N one-second 64x48 videos, packs them into S shards in video2dataset's layout, then
times `vfe predict` (a tiny random CLIP, so the figures are the pipeline's, not a model's) over
the files, over the shards on local disk, and over the same shards on a local S3 API server
(moto, as s3fs's tests run it); counts the files each run creates and times `vfe info` on the
files' folder. Needs the test extra (moto, s3fs).

    .venv/bin/python docs/scripts/shard_bench.py --videos 10000 --shards 10 --work /tmp/shard-bench
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
from clip.model import CLIP

from vfe.bench.synthetic import write_video


def run(args: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "vfe", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    print(result.stderr.strip().splitlines()[-3:], file=sys.stderr)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    return round(seconds, 1)


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=10000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/shard-bench"))
    parser.add_argument("--num_workers", type=int, default=2)
    options = parser.parse_args()
    work = options.work
    files, shards = work / "files", work / "shards"
    torch.manual_seed(0)
    weights = work / "tiny_clip.pt"
    if not weights.exists():
        work.mkdir(parents=True, exist_ok=True)
        model = CLIP(32, 32, 2, 64, 8, 8, 64, 64, 1, 1)
        torch.save(model.state_dict(), weights)
    if not shards.exists():
        per_shard = -(-options.videos // options.shards)
        shards.mkdir(parents=True)
        for shard in range(options.shards):
            with tarfile.open(shards / f"{shard:05d}.tar", "w") as archive:
                for number in range(
                    shard * per_shard, min(options.videos, (shard + 1) * per_shard)
                ):
                    key = f"{number:09d}"
                    path = write_video(files / f"{key}.mp4", 25, 25, 48, 64, seed=number)
                    archive.add(path, f"{key}.mp4")
                    meta = files / "meta.json"
                    meta.write_text(json.dumps({"key": key}))
                    archive.add(meta, f"{key}.json")
        (files / "meta.json").unlink()
    model = ["--model", "clip", "--model.arch", "custom", "--model.weights", str(weights),
             "--trainer.enable_progress_bar", "false", "--data.num_workers",
             str(options.num_workers)]  # fmt: skip
    last = f"{options.shards - 1:05d}"
    pattern = "{00000.." + last + "}.tar"
    figures = {"videos": options.videos, "shards": options.shards}
    figures["files_seconds"] = run(
        ["predict", *model, "--input_dir", str(files), "--output_dir", str(work / "out_files")]
    )
    figures["files_created"] = count_files(work / "out_files")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vfe", "info", str(work / "out_files")],
                   capture_output=True, check=True)  # fmt: skip
    figures["info_files_seconds"] = round(time.perf_counter() - started, 1)
    figures["shards_local_seconds"] = run(
        ["predict", *model, "--input_shards", str(shards / pattern),
         "--output_dir", str(work / "out_shards")]
    )  # fmt: skip
    figures["shards_created"] = count_files(work / "out_shards")

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }  # fmt: skip
    os.environ.update(env)
    import fsspec

    s3 = fsspec.filesystem("s3")
    s3.mkdir("bench")
    for path in sorted(shards.iterdir()):
        s3.put_file(str(path), f"bench/shards/{path.name}")
    figures["shards_s3_seconds"] = run(
        ["predict", *model, "--input_shards", "s3://bench/shards/" + pattern,
         "--output_dir", "s3://bench/feats"],
        env,
    )  # fmt: skip
    server.stop()
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
