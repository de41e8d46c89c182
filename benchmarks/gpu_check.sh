#!/usr/bin/env bash
# The GPU checks of one short lease (at most about 9 minutes on one H100): the CUDA tests, then the key speed rows
# against ViT on the same weights. Run from the repository root on a machine with a CUDA GPU:
#
#     bash benchmarks/gpu_check.sh [OUTPUT_FOLDER]        # default: runs/gpu_check
#
# It needs torch with CUDA, transformers, and for the CUDA tests' `freqtr-hf evaluate` run also datasets and evaluate
# (pip install -e ".[test]" where the package index is reachable). Each step is time-boxed, so that a slow step
# cannot eat the others; every step's output is kept in OUTPUT_FOLDER, one log per step.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 FREQTR_REQUIRE_CUDA=1
python3 - <<'PY' | tee "$out/device.txt"
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
PY
step() {  # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  echo "== $name (at most ${seconds} s)"
  timeout "$seconds" "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}"
}
step cuda_tests 120 python3 -m pytest -q -p no:cacheprovider tests/model/test_cuda.py
# DeiT-S shapes: eager bf16 at batch 1, 64 and 256 (tile-rounded counts too), fp32 at 256 (the README's GPU table)
step speed_bf16 100 python3 benchmarks/speed.py --device cuda --sizes small --dtypes bfloat16 \
  --batch-sizes 1 64 256 --methods freq freq-logits freq-training-free freq-x8 freq-x64 tome topk free-cut
step speed_fp32 40 python3 benchmarks/speed.py --device cuda --sizes small --dtypes float32 --batch-sizes 256 \
  --methods freq free-cut
# torch.compile (default and CUDA graphs) against the compiled ViT: batch 1 and 256
step speed_compiled 150 python3 benchmarks/speed.py --device cuda --sizes small --dtypes bfloat16 \
  --batch-sizes 1 256 --methods freq --compile
# long sequences: ViT-B/16 at 384 px (577 tokens), bf16 batch 256 eager
step speed_384 60 python3 benchmarks/speed.py --device cuda --sizes base-384 --dtypes bfloat16 --batch-sizes 256 \
  --rounds 5 --methods freq freq-x64 free-cut
# the other families at their long sequences: DINOv2-B at 518 px, CLIP ViT-L/14 at 336, SigLIP-B/16 at 384, bf16 batch 64
step speed_families 60 python3 benchmarks/speed.py --device cuda --sizes dinov2-b-518 clip-l-336 siglip-b-384 \
  --dtypes bfloat16 --batch-sizes 64 --rounds 5 --methods freq freq-logits free-cut
