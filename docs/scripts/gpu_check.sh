#!/usr/bin/env bash
# The prepared GPU run (docs/benchmarks.md takes its figures). First, here:
#   bash docs/scripts/gpu_wheels.sh
# then, with the device tool (one command, under its 600-s cap):
#   run(command="bash docs/scripts/gpu_check.sh", carry=[".whl"], timeout_s=560)
# and, on a CPU machine, to check the plan: bash docs/scripts/gpu_check.sh --dry-run
#
# What runs on the GPU image: its Python 3.12 with its own torch 2.11 / torchvision 0.26 (below
# pyproject.toml's tested lower bounds, torch 2.14 / torchvision 0.29: vfe is run from this
# source tree, not pip-installed, so the ranges are not applied), plus the wheels in .whl/
# installed with --no-deps into /tmp/site: av 18.1, clip-anytorch, pytorchvideo, fvcore,
# iopath, jsonargparse, setuptools 80 and their small pure-Python dependencies (see
# gpu_wheels.sh). machine.txt in the results names every version used.
#
# Time plan (seconds, each step cut by `timeout`): install 30, probe 20, videos 90 (untimed
# work: generating them never eats a row's time), GPU tests 100, six bench rows x 45 = 270;
# in all 510 < 560. Output is unbuffered, so a step cut short keeps what it printed.
# Results: at most 8 files in $OUT: gpu-check.json (probe, tests, every row), gpu-check.log
# (everything printed), machine.txt, and one chart.
set -uo pipefail
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
OUT=${OUT:-/tmp/vfe-gpu-check}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/vfe-gpu-work}
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
planned=0

step() {  # LIMIT NAME COMMAND...: run (or, in a dry run on a CPU, maybe only print) one step
  local limit=$1 name=$2
  shift 2
  planned=$((planned + limit))
  echo "== $name (limit ${limit} s): $*"
  if [ "$DRY_RUN" = 1 ] && [ "${CPU_RUNNABLE:-1}" = 0 ]; then
    echo "   (dry run: not run here, it needs the GPU)"
    return 0
  fi
  local started=$SECONDS
  timeout "$limit" "$@"
  local status=$?
  echo "   -> exit $status after $((SECONDS - started)) s"
  echo "{\"step\": \"$name\", \"exit\": $status, \"seconds\": $((SECONDS - started))}" \
    >> "$WORK/steps.jsonl"
  return 0
}

if [ "$DRY_RUN" = 0 ]; then
  step 30 install "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
  SECONDS_OF_VIDEO=30 VIDEOS=4
else
  planned=$((planned + 30))
  echo "== install (limit 30 s): pip install .whl/*.whl into /tmp/site (dry run: this venv)"
  export PYTHONPATH=$PWD
  SECONDS_OF_VIDEO=2 VIDEOS=2  # the same steps on less video
fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  echo "cores $(nproc)"
  df -h /dev/shm | tail -1
  "$PYTHON" -m pip list 2>/dev/null | grep -iE "^(torch|torchvision|lightning|av|numpy|clip-anytorch|pytorchvideo|jsonargparse) "
  "$PYTHON" -c "import av; print('av', av.__version__, 'from', av.__file__)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step 20 probe "$PYTHON" docs/scripts/nvdec_probe.py "$WORK/probe.json"
# Generated before any timed row: 4 x 30-s 720p H.264, split over the workers (segments >= 4 s).
BENCH=(--sets 720p --seconds "$SECONDS_OF_VIDEO" --videos_per_set "$VIDEOS"
       --videos_dir "$WORK/videos")
step 90 videos "$PYTHON" -m vfe bench "${BENCH[@]}" --make_videos_only
step 100 gpu-tests "$PYTHON" -m pytest -q -p no:cacheprovider -rs \
  tests/test_convert_on_model.py -k "gpu or nvdec or hardware or dlpack" \
  --junitxml "$WORK/tests.xml"

row() {  # NAME ARGS...: one bench row (pipeline, decode and model ceilings), 45 s at most
  local name=$1
  shift
  CPU_RUNNABLE=0 step 45 "bench $name" "$PYTHON" -m vfe bench "${BENCH[@]}" \
    --precision bf16-mixed --no_baseline --min_segment_seconds 4 \
    --output_json "$WORK/bench-$name.json" --output_png "$WORK/bench-$name.png" "$@"
}
row clip-workers --models clip --num_workers 15 --convert_on workers
row clip-model --models clip --num_workers 15 --convert_on model
row clip-nvdec-1 --models clip --num_workers 0 --convert_on model --decode_device cuda
row clip-nvdec-4 --models clip --num_workers 0 --convert_on model --decode_device cuda \
  --decode_streams 4
row slowfast-workers --models slowfast --num_workers 15 --convert_on workers
# Decoded pictures are 7x SlowFast's resized inputs (a 720p batch of 8 clips: 350 MB), and
# each worker keeps two batches in shared memory: the default batch size here.
row slowfast-model --models slowfast --num_workers 15 --convert_on model --cudnn_benchmark

# One JSON for everything; one chart.
"$PYTHON" - "$WORK" "$OUT/gpu-check.json" "$planned" <<'EOF'
import json, sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
work, out, planned = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
def load(path):
    return json.loads(path.read_text()) if path.exists() else None
def tests(path):
    if not path.exists():
        return None
    cases = {}
    for case in ElementTree.parse(path).iter("testcase"):
        outcome = "passed"
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = f"{kind}: {(found.get('message') or '')[:300]}"
        cases[case.get("name")] = outcome
    return cases
report = {
    "planned_seconds": planned,
    "steps": [json.loads(l) for l in (work / "steps.jsonl").read_text().splitlines()]
    if (work / "steps.jsonl").exists() else [],
    "probe": load(work / "probe.json"),
    "tests": tests(work / "tests.xml"),
    "rows": {p.stem.removeprefix("bench-"): load(p) for p in sorted(work.glob("bench-*.json"))},
}
out.write_text(json.dumps(report, indent=1))
print(f"results: {out} ({len(report['rows'])} bench rows)")
EOF
chart=$(ls "$WORK"/bench-clip-model.png 2>/dev/null | head -1)
[ -n "$chart" ] && cp "$chart" "$OUT/chart-clip-model.png"
echo "== planned ${planned} s in all; files in $OUT: $(ls "$OUT" | wc -l)"
ls "$OUT"
