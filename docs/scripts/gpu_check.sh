#!/usr/bin/env bash
# #17's prepared GPU run (one call; docs/benchmarks.md takes its figures). First, here:
#   bash docs/scripts/gpu_wheels.sh
# then, with the device tool:
#   run(command="bash docs/scripts/gpu_check.sh", carry=[".whl"], timeout_s=560)
# Everything it measures lands in $OUT: the GPU tests' result, then `vfe bench` rows (CLIP
# ViT-B/32 and SlowFast R50 at bf16 on 720p) with the conversion in the workers, on the GPU,
# and with NVDEC decoding; each step has its own time limit, so a slow one leaves the others.
set -uo pipefail
OUT=${OUT:-/tmp/vfe-gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONWARNINGS=ignore
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  nproc
  df -h /dev/shm
  python3 -c "import av, torch, torchvision, lightning; from av.codec.hwaccel import \
hwdevices_available as h; print('av', av.__version__, 'torch', torch.__version__, \
'torchvision', torchvision.__version__, 'lightning', lightning.__version__, 'hw', h())"
} 2>&1 | tee "$OUT/machine.txt"

echo "== GPU tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/test_convert_on_model.py \
  -k "gpu or nvdec" 2>&1 | tail -25 | tee "$OUT/tests.txt"

bench() {  # NAME SECONDS ARGS...
  local name=$1 limit=$2
  shift 2
  echo "== bench $name"
  timeout "$limit" python3 -m vfe bench --sets 720p --seconds 10 --precision bf16-mixed \
    --no_baseline --videos_dir /tmp/vfe-bench-videos --output_json "$OUT/bench-$name.json" \
    --output_png "$OUT/bench-$name.png" "$@" 2>&1 | grep -v Warning | tail -6
}
bench clip-workers 70 --models clip --num_workers 15 --convert_on workers
bench clip-model 70 --models clip --num_workers 15 --convert_on model
bench clip-model-b256 70 --models clip --num_workers 15 --convert_on model --batch_size 256
bench clip-nvdec 70 --models clip --num_workers 0 --convert_on model --decode_device cuda
bench clip-nvdec-4 70 --models clip --num_workers 0 --convert_on model --decode_device cuda \
  --decode_streams 4
bench slowfast-workers 70 --models slowfast --num_workers 15 --convert_on workers
# Decoded pictures are 7x SlowFast's resized inputs (a 720p batch of 8 clips: 350 MB), and
# each worker keeps two batches in shared memory: the default batch size here.
bench slowfast-model 70 --models slowfast --num_workers 15 --convert_on model --cudnn_benchmark
echo "== done"
