#!/usr/bin/env bash
# The GPU paths, proven on a machine with an NVIDIA GPU (CI has none; the same code paths are tested on CPU):
# CUDA training at fp32 and bf16 with the teacher in bf16, a bitsandbytes NF4 teacher, and onnxruntime's CUDA
# and TensorRT execution providers where installed. Run from the repository root, in an environment where
# `compress` and a CUDA build of torch import (plus onnxruntime-gpu and bitsandbytes for their checks):
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Writes benchmarks/results/scale_cuda.json (CUDA fp32 vs bf16: target bf16 >= 1.8x fp32 at equal accuracy) and
# a log of every check into OUT_DIR (default export/gpu-check).
set -euo pipefail
out=${1:-export/gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

echo "== 1. torch, bf16, onnxruntime providers, bitsandbytes"
python3 - <<'PY'
import importlib.util

import torch

assert torch.cuda.is_available(), "torch sees no CUDA GPU"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
import onnxruntime as ort

print("onnxruntime", ort.__version__, ort.get_available_providers())
print("bitsandbytes", "installed" if importlib.util.find_spec("bitsandbytes") else "missing")
PY

echo "== 2. the training engine on CUDA (tiny models): devices, precision, resume, two processes"
python3 -m pytest -q -p no:cacheprovider tests/training tests/models/test_bnb.py

echo "== 3. a digits recipe trained on CUDA in bf16, teacher in bf16, exported and profiled on cuda-gpu"
cat > "$out/cuda.yaml" <<'YAML'
name: gpu-check
seed: 0
data: {format: sklearn_digits}
teacher:
  cnn: {widths: [64, 128], depths: [2, 2], block: resnet}
train: {device: cuda, precision: bf16, teacher_precision: bf16}
stages:
  - stage: finetune
    epochs: 15
    batch_size: 64
    lr: 3.0e-3
  - stage: distill
    student:
      cnn: {widths: [16, 32], depths: [1, 1], block: plain}
    epochs: 30
    batch_size: 64
    lr: 5.0e-3
  - stage: export
    int8: [dynamic]
  - stage: profile
    devices: [x86-cpu, cuda-gpu]
    shape: {batch: 1}
    runs: 200
YAML
python3 -m compress validate "$out/cuda.yaml"
python3 -m compress run "$out/cuda.yaml" --out "$out/cuda" || echo "cuda recipe FAILED (exit $?)"
python3 - "$out/cuda/manifest.json" <<'PY'
import json
import sys

training = json.load(open(sys.argv[1]))["training"]
print(training)
assert training["device"].startswith("cuda") and training["precision"] == "bf16", training
PY

echo "== 4. CUDA fp32 against bf16 on SST-2 distillation (needs ../shared/data and the MiniLM package)"
(cd benchmarks && python3 scale.py --device cuda --nprocs 1 --precisions fp32,bf16 --rounds 1 --tag _cuda) \
  || echo "scale.py on CUDA FAILED (exit $?)"

echo "== 5. the student on onnxruntime's TensorRT execution provider, where installed"
student=$(ls "$out"/cuda/*-export-*/student.onnx 2>/dev/null | head -1 || true)
if [ -n "$student" ]; then
  python3 -m compress profile "$student" --device cuda-tensorrt --batch 1 --runs 200 \
    || echo "cuda-tensorrt: not measured (TensorRT execution provider missing?)"
fi
