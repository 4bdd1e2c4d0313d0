#!/usr/bin/env bash
# Specialist CUDA path vs torch fp16 on the same GPU: a BERT-base-sized classifier, seq len 128.
#
# Self-contained for a GPU machine with no registry access: needs only what its image has
# (PyTorch, transformers/tokenizers, onnxruntime-gpu) plus this repository's sources (found via
# PYTHONPATH=services, no install). It builds a BERT-base model from a BertConfig (random weights:
# throughput does not depend on them) and a WordPiece tokenizer from a synthetic vocabulary, exports
# the model to ONNX in fp16 (torch.onnx, half-precision model on the GPU), writes a specialist
# artifact (model.onnx, tokenizer/, manifest.json) and times:
#   1. InferenceEngine.predict  — the specialist's path: tokenize + ORT CUDA with IO binding + softmax/label map
#   2. InferenceEngine.infer    — ORT CUDA only, pre-tokenized batches
#   3. torch fp16               — the same weights, pre-tokenized batches already on the GPU
#   4. torch fp16 + tokenize    — tokenize + host->device + forward + softmax + device->host
# It prints a table and a line `RESULT gpu_engine_tps=<1> torch_fp16_tps=<3> engine_vs_torch=<1/3>`.
# What is missing (no GPU, no CUDA provider in onnxruntime, no prometheus_client) is said plainly.
#
# Usage: bench/gpu_specialist.sh [--records N] [--batch B] [--cpu-smoke]
#   --cpu-smoke: a tiny model in fp32 on the CPU, to prove the script works where there is no GPU
#                (its figures mean nothing).
# Environment: PYTHON (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/services${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
exec "${PYTHON:-python3}" - "$@" <<'PY'
import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

parser = argparse.ArgumentParser(prog="gpu_specialist.sh")
parser.add_argument("--records", type=int, default=4096)
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--seq", type=int, default=128)
parser.add_argument("--cpu-smoke", action="store_true")
args = parser.parse_args()
if args.cpu_smoke:
    args.records, args.batch, args.seq = min(args.records, 64), min(args.batch, 16), min(args.seq, 32)


def say(msg):
    print(f"[gpu_specialist] {msg}", flush=True)


def have(module):
    return importlib.util.find_spec(module) is not None


missing = [m for m in ("torch", "transformers", "tokenizers", "onnxruntime", "numpy") if not have(m)]
if missing:
    say(f"cannot run: these packages are not importable: {missing}")
    sys.exit(2)
if not have("prometheus_client"):
    # The engine's batcher records metrics; without the package, a no-op stand-in keeps the path intact.
    say("prometheus_client is not installed: metrics replaced by a no-op stand-in (not measured here)")

    class _Metric:
        def __init__(self, *a, **k): pass
        def labels(self, *a, **k): return self
        def observe(self, *a): pass
        def inc(self, *a): pass
        def set(self, *a): pass

    stub = types.ModuleType("prometheus_client")
    stub.Counter = stub.Gauge = stub.Histogram = _Metric
    sys.modules["prometheus_client"] = stub

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification

from autoannotator.artifacts.manifest import Manifest, file_sha256
from autoannotator.artifacts.engine import InferenceEngine

gpu = torch.cuda.is_available() and not args.cpu_smoke
ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
say(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), onnxruntime {ort.__version__} "
    f"providers {ort.get_available_providers()}")
if gpu:
    say(f"device: {torch.cuda.get_device_name(0)}")
elif not args.cpu_smoke:
    say("no CUDA device visible to torch: nothing to measure on a GPU (use --cpu-smoke to test the script)")
    sys.exit(3)

LABELS = ["negative", "neutral", "positive"]
work = Path(tempfile.mkdtemp(prefix="aa-gpu-bench-"))
try:
    # -- tokenizer: WordPiece over a synthetic vocabulary (no download) --------------------------
    size = 30522 if not args.cpu_smoke else 1000
    words = [f"w{i}" for i in range(size - 5)]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    artifact = work / "artifact"
    (artifact / "tokenizer").mkdir(parents=True)
    tok.save(str(artifact / "tokenizer" / "tokenizer.json"))
    (artifact / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]"}))

    # -- model: BERT-base shape (tiny with --cpu-smoke), random weights -----------------------------
    if args.cpu_smoke:
        config = BertConfig(vocab_size=size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, num_labels=3)
    else:
        config = BertConfig(vocab_size=size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, num_labels=3)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    device = "cuda" if gpu else "cpu"
    dtype = torch.float16 if gpu else torch.float32
    precision = "fp16" if gpu else "fp32"
    say(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {precision}, {device}")

    # -- export to ONNX: fp32 graph, then the exporter's fp16 conversion (`autoannotator export --fp16`:
    # float16 weights and compute, int64 inputs and float32 logits at the boundary). Exporting a
    # half-precision torch model directly gives graphs with mixed LayerNorm types on newer transformers.
    dummy = torch.ones((2, 16), dtype=torch.long)
    fp32_path = work / "model.fp32.onnx"
    onnx_path = artifact / "model.onnx"
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "token_type_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    try:
        with torch.no_grad():
            torch.onnx.export(model, (dummy, dummy, torch.zeros_like(dummy)), str(fp32_path),
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
        if gpu:
            from autoannotator.artifacts.convert import convert_fp16

            convert_fp16(fp32_path, onnx_path)
        else:
            shutil.copy(fp32_path, onnx_path)
    except Exception as exc:
        say(f"cannot export to ONNX here: {type(exc).__name__}: {exc}")
        sys.exit(4)
    model = model.to(device=device, dtype=dtype)
    Manifest(specialist="bench", version="bench-fp16" if gpu else "bench-smoke", sha256=file_sha256(onnx_path),
             model_labels=LABELS, label_map={x: x for x in LABELS}, task_labels=LABELS, max_length=args.seq,
             precision=precision).write(artifact)

    # -- inputs: every text is longer than seq, so every batch is batch x seq tokens ---------------------
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{i}" for i in rng.integers(0, size - 5, args.seq + 8)) for _ in range(args.records)]
    budget = args.batch * args.seq

    def timed(fn, n):
        fn()  # warm-up (allocations, cuDNN/cuBLAS autotune)
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if gpu:
            torch.cuda.synchronize()
        return n / (time.perf_counter() - start)

    rows = []
    # 1 + 2: the specialist's engine.
    engine_tps = infer_tps = None
    if gpu and not ort_cuda:
        say("onnxruntime has no CUDAExecutionProvider (CPU-only onnxruntime?): the specialist CUDA path "
            "cannot be measured; only torch is timed")
    else:
        engine = InferenceEngine.from_artifact(artifact, provider="cuda" if gpu else "cpu")
        say(f"engine providers really used: {engine.providers}; IO binding: {engine._io_binding}")
        engine_tps = timed(lambda: engine.predict(texts, max_batch_tokens=budget, max_batch_size=args.batch),
                           len(texts))
        encodings = engine.tokenize(texts)
        assert all(len(e.ids) == args.seq for e in encodings), "texts must fill the sequence length"
        chunks = [encodings[i:i + args.batch] for i in range(0, len(encodings), args.batch)]
        infer_tps = timed(lambda: [engine.infer(c) for c in chunks], len(texts))
        rows.append(("specialist engine: tokenize + ORT + softmax", engine_tps))
        rows.append(("specialist engine: ORT infer only", infer_tps))

    # 3 + 4: torch on the same device and precision.
    tok.enable_truncation(args.seq)
    ids = torch.tensor([e.ids for e in tok.encode_batch(texts)], dtype=torch.long)
    ids_dev = ids.to(device)
    mask_dev = torch.ones_like(ids_dev)

    def torch_forward():
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch):
                model(input_ids=ids_dev[i:i + args.batch], attention_mask=mask_dev[i:i + args.batch]).logits

    def torch_end_to_end():
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch):
                batch = torch.tensor([e.ids for e in tok.encode_batch(texts[i:i + args.batch])], device=device)
                logits = model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
                torch.softmax(logits.float(), dim=-1).cpu()

    # 5: the same graph through ONNX Runtime's transformer optimiser (fused attention / layer norm) first.
    if gpu and ort_cuda:
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            fused = optimize_model(str(fp32_path), model_type="bert", num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size, use_gpu=True)
            fused.convert_float_to_float16(keep_io_types=True)
            fused.save_model_to_file(str(onnx_path))
            Manifest(specialist="bench", version="bench-fp16-fused", sha256=file_sha256(onnx_path),
                     model_labels=LABELS, label_map={x: x for x in LABELS}, task_labels=LABELS,
                     max_length=args.seq, precision=precision).write(artifact)
            fused_engine = InferenceEngine.from_artifact(artifact, provider="cuda")
            rows.append(("specialist engine, fused graph: tokenize + ORT + softmax",
                         timed(lambda: fused_engine.predict(texts, max_batch_tokens=budget,
                                                            max_batch_size=args.batch), len(texts))))
            rows.append(("specialist engine, fused graph: ORT infer only",
                         timed(lambda: [fused_engine.infer(c) for c in chunks], len(texts))))
        except Exception as exc:  # noqa: BLE001 - a benchmark row that cannot run is reported, not fatal
            say(f"fused-graph variant not measured: {type(exc).__name__}: {exc}")

    torch_tps = timed(torch_forward, len(texts))
    rows.append((f"torch {precision}: forward only (inputs on {device})", torch_tps))
    rows.append((f"torch {precision}: tokenize + H2D + forward + softmax + D2H", timed(torch_end_to_end, len(texts))))

    title = "CPU SMOKE (tiny model; figures mean nothing)" if args.cpu_smoke else torch.cuda.get_device_name(0)
    print(f"\nspecialist CUDA path vs torch, BERT-base-shaped classifier, seq {args.seq}, batch {args.batch}, "
          f"{args.records} texts, {precision} — {title}")
    print(f"{'path':<62} {'texts/s':>10}")
    for name, tps in rows:
        print(f"{name:<62} {tps:>10.1f}")
    ratio = engine_tps / torch_tps if engine_tps else float("nan")
    print(f"RESULT gpu_engine_tps={engine_tps or float('nan'):.1f} torch_fp16_tps={torch_tps:.1f} "
          f"engine_vs_torch={ratio:.3f}{' smoke=1' if args.cpu_smoke else ''}")
finally:
    shutil.rmtree(work, ignore_errors=True)
PY
