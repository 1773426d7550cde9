#!/usr/bin/env bash
# Wheels the GPU machine lacks (Python 3.12, torch there; no PyAV, clip, pytorchvideo,
# jsonargparse), into .whl/ (git-ignored through .git/info/exclude), for docs/scripts/gpu_check.sh.
# Run here, in the repository root: bash docs/scripts/gpu_wheels.sh
set -euo pipefail
mkdir -p .git/info && touch .git/info/exclude
grep -qx "/.whl/" .git/info/exclude || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
platforms=()
for n in 2_28 2_27 2_17 2014 1; do
  case $n in 2014|1) platforms+=(--platform "manylinux${n}_x86_64");; *) platforms+=(--platform "manylinux_${n}_x86_64");; esac
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl av==18.1.0
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
  clip-anytorch==2.6.0 ftfy==6.3.1 wcwidth parameterized==0.9.0 yacs==0.1.8 \
  termcolor jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 \
  setuptools==80.10.2  # clip and pytorchvideo import pkg_resources, gone from setuptools 81
# Published as source only (pure Python): built into wheels here.
python3 -m pip wheel -q --no-deps -w .whl pytorchvideo==0.1.5 fvcore==0.1.5.post20221221 iopath==0.1.10
du -sh .whl && ls .whl
