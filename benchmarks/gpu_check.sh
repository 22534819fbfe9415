#!/usr/bin/env bash
# GPU check (issue #9): SimCLR with a ResNet-18 on CIFAR-shaped data, DDPM, and DANN, each under fp32, fp16
# and bf16, printing steady-state images/s and peak GPU memory (torch.cuda.max_memory_allocated).
# Then (issue #27) the image-folder rows of benchmarks/folder_speed.py on the GPU, bf16 and channels-last:
# DANN M->U on PNG folders, SimCLR on a 10,000-image 32 px folder, Lite0 fine-tuning on Office-31 webcam
# at 224 px; project (cache cold, cache warm) vs bare loop, whole process, one run each
# (tables: benchmarks/results/folder_speed_*_gpu.md; needs ../shared/data). FOLDERS=0 skips them.
# Synthetic data (random uint8 npz files), so nothing is downloaded. Each run is bounded by a fixed number
# of steps (--warmup + --steps batches of one epoch); the whole check takes a few minutes on an H100.
#
#   bash benchmarks/gpu_check.sh                    # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run          # the same script on the CPU, tiny (checks it runs)
#   OUT=gpu.txt bash benchmarks/gpu_check.sh        # output file (default: benchmarks/results/gpu_check.txt)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-benchmarks/results/gpu_check.txt}"
DRY_RUN=""
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN="--dry-run"
elif ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)." >&2
  echo "Run it on a GPU machine, or check the script on the CPU with: bash benchmarks/gpu_check.sh --dry-run" >&2
  exit 2
fi

WORK="$(mktemp -d -t gpu_check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
{
  echo "# gpu_check.sh $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # each run: 5 warm-up + 40 timed steps; `timeout` bounds the whole check even if a run hangs
  timeout 900 "$PYTHON" benchmarks/throughput.py --part gpu $DRY_RUN --warmup 5 --steps "${STEPS:-40}" \
    --work "$WORK" --out "$WORK/gpu.json"
  if [[ -z "$DRY_RUN" && "${FOLDERS:-1}" == "1" ]]; then
    timeout 1200 "$PYTHON" benchmarks/folder_speed.py --gpu --rows simclr lite0 dann --repeats "${REPEATS:-1}" \
      --machine "$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0))"), bf16, channels-last" \
      | grep -E '^\||^##|^Bare|load|^    python' || echo "folder_speed rows failed (exit $?)"
  fi
} 2>&1 | grep -v -E '^[┏┃┡│└━]|^ {20,}|params|Modules in|FLOPs|^Epoch ' | tee "$OUT"
echo "written: $OUT"
