#!/usr/bin/env bash
# The specialist's GPU paths vs torch fp16 on the same card: a BERT-base-shaped classifier, seq 128, batch 64.
#
# Prints, per path: torch fp16 forward; ORT CUDA with the optimised (fused) fp16 graph; ORT TensorRT fp16;
# end to end through the specialist engine (tokenization overlapped with inference) and through the
# Specialist processor; then
#   RESULT gpu_infer_tps=... torch_fp16_tps=... gpu_infer_vs_torch=... gpu_e2e_vs_infer=...
# and writes the report to results/gpu/gpu_specialist_<gpu name>.txt. The work is in bench/gpu_specialist.py
# (its docstring says what each path measures). Built to fit one prepared run of under 8 minutes on an
# H200 (--deadline-s 400 by default: no new path starts after that).
#
# Self-contained for a GPU machine with no registry access: needs only PyTorch, transformers/tokenizers and
# onnxruntime-gpu (TensorRT libraries for the TensorRT row) plus this repository's sources via PYTHONPATH.
#
# Usage: bench/gpu_specialist.sh [--records N] [--batch B] [--seq S] [--repeats R] [--deadline-s S]
#                                [--skip-tensorrt] [--out-dir DIR] [--cpu-smoke]
#   --cpu-smoke: a tiny fp32 model on the CPU, to prove the script works where there is no GPU
#                (its figures mean nothing; nothing is written unless --out-dir is given).
# Environment: PYTHON (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/services${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
exec "${PYTHON:-python3}" bench/gpu_specialist.py "$@"
