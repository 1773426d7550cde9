#!/usr/bin/env bash
# One long video, one process against two gloo ranks, 1 thread each (docs/benchmarks.md).
# Needs in/long.mp4 and vitb32_random.pt in the working folder: see the python lines below.
set -e
mkdir -p "${1:-/tmp/ranks}/in" && cd "${1:-/tmp/ranks}"
if [ ! -f in/long.mp4 ]; then
  python -c "
import torch
from pathlib import Path
from clip.model import CLIP
from vfe.bench.synthetic import write_video
torch.manual_seed(0)
torch.save(CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12).state_dict(), 'vitb32_random.pt')
write_video(Path('in/long.mp4'), 1000, 25, 360, 640, seed=7)"
fi
common="--model clip --model.weights vitb32_random.pt --input_dir in --trainer.accelerator cpu --data.num_workers 0 --data.decode_threads 1 --data.min_segment_seconds 4 --trainer.enable_progress_bar false --overwrite"
export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
for i in 1 2; do
  s=$(date +%s.%N); python -m vfe predict $common --output_dir one 2>/dev/null; e=$(date +%s.%N); echo "one process: $(echo "$e - $s" | bc) s"
  s=$(date +%s.%N); python -m vfe predict $common --output_dir two --trainer.devices 2 --trainer.strategy ddp 2>/dev/null; e=$(date +%s.%N); echo "two ranks: $(echo "$e - $s" | bc) s"
done
python -c "
import numpy as np, json
a=np.load('one/long.npz'); b=np.load('two/long.npz')
print('max abs diff', np.abs(a['features']-b['features']).max(), 'rows', len(a['features']), json.loads(str(b['provenance']))['video'])
"
