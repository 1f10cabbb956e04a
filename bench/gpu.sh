#!/usr/bin/env bash
# The one command to run on a machine with a GPU (about 4 minutes on one H200):
#   1. the `cuda` tests: CPU and CUDA results agree (occlusion, gradient ERF, erf-probe on a ParseNet checkpoint);
#   2. the occlusion speed tables on the GPU, fp32 and bf16: (a) full, (b) incremental, (c) captum (extrapolated,
#      or bounded from (d) where captum is not installed), (d) the plain forward ceiling, (e) the whole probe.
# Usage, from anywhere:  bash bench/gpu.sh [LOG]     (the full output also goes to LOG, default ./gpu.log)
# Needs python3 with torch (CUDA), torchvision, numpy, scipy, click, tqdm, pillow, pytest, scikit-image; no venv,
# no network (random weights). PYTHON=... picks another interpreter. Each step has its own time limit.
set -u -o pipefail
LOG=$(realpath -m "${1:-gpu.log}")
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

step() {  # step LIMIT_SECONDS COMMAND...: run it under a time limit, report its exit code, remember a failure
  local limit=$1 rc
  shift
  echo "== $* (limit ${limit}s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "== exit $rc after $((SECONDS - t0))s"
  [ "$rc" -eq 0 ] || status=1
}

speed() {  # speed LIMIT WORKLOAD PRECISION EXTRA...: one table of bench/probe_speed.py on the GPU
  local limit=$1 workload=$2 precision=$3
  shift 3
  step "$limit" "$PY" bench/probe_speed.py --device cuda --workload "$workload" --precision "$precision" "$@"
}

exec > >(tee "$LOG") 2>&1  # everything below also goes to the log
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
step 240 "$PY" -m pytest -q -rs -m cuda -p no:cacheprovider -s tests/test_cuda.py
# VGG16 conv5_3 on the whole 11x11 stride-3 grid (5184 positions), the issue's workload, plus the protocol.
speed 120 vgg16 fp32 --positions 0 --batch 256
speed 120 vgg16 bf16 --positions 0 --batch 256 --protocol 8
# The README's CUDA and sharded examples, as erf-probe runs them (random weights, a few photographs).
TMP=$(mktemp -d)
printf 'from cli.probe import probe_command\nprobe_command(prog_name="erf-probe")\n' > "$TMP/erf_probe.py"
"$PY" -c "
import sys; from pathlib import Path; from PIL import Image; from skimage import data
out = Path(sys.argv[1]); out.mkdir()
for name in ('astronaut', 'coffee', 'chelsea', 'rocket'):
    Image.fromarray(getattr(data, name)()).convert('RGB').save(out / f'{name}.png')
" "$TMP/photos"
step 60 "$PY" "$TMP/erf_probe.py" vgg16 --layer features.29 --images "$TMP/photos" --resize 224 --device cuda \
  --precision bf16 --top-k 4 --no-progress --out "$TMP/probe-cuda"
step 60 "$PY" -m torch.distributed.run --nproc-per-node 1 "$TMP/erf_probe.py" vgg16 --layer features.29 \
  --images "$TMP/photos" --resize 224 --device cuda --top-k 4 --no-progress --out "$TMP/probe-torchrun-cuda"
step 90 "$PY" -m torch.distributed.run --nproc-per-node 2 "$TMP/erf_probe.py" vgg16 --layer features.29 \
  --images "$TMP/photos" --resize 64 --device cpu --top-k 2 --no-progress --out "$TMP/probe-torchrun-cpu"
rm -rf "$TMP"
# Memory and speed on the other workloads: (a), (b), (d).
speed 60 resnet50 fp32 --positions 1024 --batch 256 --no-captum
speed 60 resnet50 bf16 --positions 1024 --batch 256 --no-captum
speed 60 parsenet fp32 --positions 0 --batch 256 --no-captum
date -u
echo "== gpu.sh: $([ $status -eq 0 ] && echo 'all steps passed' || echo 'SOME STEPS FAILED'), log in $LOG"
exit $status
