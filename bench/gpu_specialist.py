"""The specialist's GPU paths against torch fp16 on the same card (run by ``bench/gpu_specialist.sh``).

Self-contained for a GPU machine without registry access: needs PyTorch, transformers, tokenizers,
onnxruntime(-gpu) and this repository's sources (``PYTHONPATH=services``). It builds a
BERT-base-shaped classifier from a ``BertConfig`` (random weights: throughput does not depend on
them) and a WordPiece tokenizer over a synthetic vocabulary, saves both as a Hugging Face folder
and exports them with the product's own exporter (``export_model``: fp16, optimised and not),
then times, per path, on texts that all fill ``--seq`` tokens:

1. torch fp16 forward, inputs already on the GPU;
2. ORT CUDA, fp16 graph fused by the transformer optimiser (``export --fp16``), inference only;
3. ORT TensorRT fp16 (the unfused fp16 graph; TensorRT fuses it itself), inference only;
4. end to end through the specialist engine on the fastest of 2/3: tokenization and batching on
   one thread, inference on the :class:`InferenceWorker` thread (the specialist's overlap);
5. the same through the whole Specialist processor (decode, batcher, Prediction protobufs).

Then ``RESULT gpu_infer_tps=<best of 2/3> torch_fp16_tps=<1> gpu_infer_vs_torch=<ratio>
gpu_e2e_vs_infer=<4 / its path's inference-only>``. A path that cannot run is reported with its
reason, never silently skipped. ``--cpu-smoke`` runs the same code on a tiny fp32 model on the
CPU (figures mean nothing; it proves the script works). ``--deadline-s`` stops starting new paths
once passed, so the run fits a fixed device budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

LABELS = ["negative", "neutral", "positive"]
START = time.monotonic()


def say(msg: str) -> None:
    print(f"[gpu_specialist {time.monotonic() - START:6.1f}s] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_specialist.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per path (the best is kept)")
    parser.add_argument("--deadline-s", type=float, default=400.0, help="start no new path after this many seconds")
    parser.add_argument("--skip-tensorrt", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="write the report here (default on a GPU: results/gpu; with --cpu-smoke: nowhere)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, fp32, CPU: proves the script runs")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.records, args.batch, args.seq = min(args.records, 96), min(args.batch, 16), min(args.seq, 32)
        args.repeats = 1
    return args


def stub_prometheus() -> None:
    """The engine records metrics; without prometheus_client a no-op stand-in keeps its path intact."""
    if importlib.util.find_spec("prometheus_client") is not None:
        return
    say("prometheus_client is not installed: metrics replaced by a no-op stand-in (not measured here)")

    class _Metric:
        def __init__(self, *a: Any, **k: Any) -> None: ...
        def labels(self, *a: Any, **k: Any) -> _Metric: return self
        def observe(self, *a: Any) -> None: ...
        def inc(self, *a: Any) -> None: ...
        def set(self, *a: Any) -> None: ...

    stub = types.ModuleType("prometheus_client")
    stub.Counter = stub.Gauge = stub.Histogram = _Metric  # type: ignore[attr-defined]
    sys.modules["prometheus_client"] = stub


def build_hf_folder(folder: Path, args: argparse.Namespace) -> tuple[Any, int]:
    """A BERT-base-shaped (tiny with --cpu-smoke) classifier and WordPiece tokenizer saved as an HF folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    size = 1000 if args.cpu_smoke else 30522
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate([*specials, *(f"w{i}" for i in range(size - len(specials)))])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=args.seq)
    shape = (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if args.cpu_smoke
             else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072))
    config = BertConfig(vocab_size=size, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                        label2id={x: i for i, x in enumerate(LABELS)}, **shape)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return model, size


def timed(fn: Callable[[], object], n: int, repeats: int, sync: Callable[[], None]) -> float:
    """Texts per second of ``fn`` over ``n`` texts: one warm-up pass, then the best of ``repeats``."""
    fn()
    sync()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = max(best, n / (time.perf_counter() - start))
    return best


def overlapped_predict(engine: Any, texts: list[str], batch: int, chunk: int) -> Any:
    """The specialist's two stages: tokenize + batch a chunk here while the worker infers the previous one."""
    import numpy as np
    from autoannotator.artifacts.batching import plan_batches
    from autoannotator.specialist.pipeline import InferenceJob, InferenceWorker

    worker: InferenceWorker[int] = InferenceWorker("bench")
    out = np.empty((len(texts), len(engine.task_labels)), dtype=np.float32)
    try:
        for start in range(0, len(texts), chunk):
            encodings = engine.tokenize(texts[start:start + chunk])
            for indices in plan_batches([len(e.ids) for e in encodings], batch * engine.max_length, batch):
                worker.submit(InferenceJob(engine, [start + i for i in indices], [encodings[i] for i in indices]))
            for job in worker.finished():
                _collect(job, out)
        for job in worker.finished(wait=True):
            _collect(job, out)
    finally:
        worker.stop()
    return out


def _collect(job: Any, out: Any) -> None:
    if job.error is not None:
        raise job.error
    out[job.items] = job.probs


def processor_run(engine: Any, texts: list[str], batch: int, chunk: int) -> int:
    """The whole Specialist processor over in-memory messages (no broker): predictions produced."""
    from autoannotator.config import parse_config
    from autoannotator.specialist.service import Specialist
    from autoannotator.wire import RawMessage

    config = parse_config({
        "task": {"name": "bench", "description": "bench", "labels": LABELS},
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "consume_batch": chunk},
        "input": {"format": "text"}, "voter": {"quorum": 1},
        "specialists": [{"name": "bench", "max_batch_size": batch, "max_batch_tokens": batch * engine.max_length,
                         "max_length": engine.max_length, "max_wait_ms": 1000}],
    })

    class Sink:
        produced = 0

        def send(self, topic: str, key: object, value: Any) -> None:
            value.SerializeToString()
            Sink.produced += 1

    specialist, sink = Specialist(config, "bench", engine), Sink()
    messages = [RawMessage("texts", 0, i, f"r{i}".encode(), t.encode(), 0) for i, t in enumerate(texts)]
    for start in range(0, len(messages), chunk):
        specialist.handle(messages[start:start + chunk], sink)  # type: ignore[arg-type]
        specialist.tick(sink)  # type: ignore[arg-type]
    specialist.close(sink)  # type: ignore[arg-type]
    return Sink.produced


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needed = ("torch", "transformers", "tokenizers", "onnxruntime", "numpy")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        say(f"cannot run: these packages are not importable: {missing}")
        return 2
    stub_prometheus()
    import numpy as np
    import onnxruntime as ort
    import torch
    from autoannotator.artifacts.engine import InferenceEngine
    from autoannotator.artifacts.export import export_model

    gpu = torch.cuda.is_available() and not args.cpu_smoke
    available = ort.get_available_providers()
    say(f"torch {torch.__version__} (cuda: {torch.cuda.is_available()}), onnxruntime {ort.__version__} {available}")
    if not gpu and not args.cpu_smoke:
        say("no CUDA device visible to torch: nothing to measure on a GPU (use --cpu-smoke to test the script)")
        return 3
    device_name = torch.cuda.get_device_name(0) if gpu else "CPU smoke"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    fp16 = gpu
    rows: list[tuple[str, float | None, str]] = []
    work = Path(tempfile.mkdtemp(prefix="aa-gpu-bench-"))
    try:
        model, size = build_hf_folder(work / "hf", args)
        say(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; device {device_name}")
        rng = np.random.default_rng(0)
        texts = [" ".join(f"w{i}" for i in rng.integers(0, size - 5, args.seq + 8)) for _ in range(args.records)]
        chunks = max(args.batch * 8, 256)

        # 1. torch forward, same weights and precision, inputs already on the device.
        device, dtype = ("cuda", torch.float16) if gpu else ("cpu", torch.float32)
        tmodel = model.to(device=device, dtype=dtype)
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(work / "hf")(texts, truncation=True, max_length=args.seq, padding=True,
                                                          return_tensors="pt")["input_ids"].to(device)
        mask = torch.ones_like(ids)

        def torch_forward() -> None:
            with torch.inference_mode():
                for i in range(0, len(texts), args.batch):
                    _ = tmodel(input_ids=ids[i:i + args.batch], attention_mask=mask[i:i + args.batch]).logits

        torch_tps = timed(torch_forward, len(texts), args.repeats, sync)
        rows.append((f"torch {'fp16' if gpu else 'fp32'} forward (inputs on {device})", torch_tps, ""))
        tmodel.to("cpu")  # free the card for ONNX Runtime
        if gpu:
            torch.cuda.empty_cache()

        # 2 + 3: the product's exporter, then the engine per provider.
        engines: dict[str, Any] = {}
        paths = [("cuda", True)] if gpu else [("cpu", True)]
        if not args.skip_tensorrt:  # tried in the smoke run too: its failure row proves the reporting
            paths.append(("tensorrt", False))
        for provider, optimize in paths:
            label = f"ORT {provider} {'fp16' if fp16 else 'fp32'}{', optimised graph' if optimize else ''}: infer only"
            if time.monotonic() - START > args.deadline_s:
                rows.append((label, None, "not run: deadline reached"))
                continue
            try:
                out = work / f"artifact-{provider}"
                started = time.monotonic()
                report = export_model(work / "hf", out, task_labels=LABELS, max_length=args.seq, fp16=fp16,
                                      optimize=optimize, include_weights=False, prefer="torch.onnx")
                say(f"exported for {provider} in {time.monotonic() - started:.0f}s: {report.summary()}")
                started = time.monotonic()
                engine = InferenceEngine.from_artifact(out, provider=provider, max_batch_size=args.batch,
                                                       max_length=args.seq, tensorrt_cache_dir=work / "trt")
                say(f"{provider}: session on {engine.providers} in {time.monotonic() - started:.0f}s; "
                    f"buffers: {engine.buffers is not None}")
                if engine.provider != provider:
                    rows.append((label, None, f"not measured: the session fell back to {engine.provider}"))
                    continue
                encodings = engine.tokenize(texts)
                assert all(len(e.ids) == args.seq for e in encodings), "texts must fill the sequence length"
                batches = [encodings[i:i + args.batch] for i in range(0, len(encodings), args.batch)]
                tps = timed(lambda e=engine, b=batches: [e.infer(x) for x in b], len(texts), args.repeats, sync)
                rows.append((label, tps, ""))
                engines[provider] = (engine, tps)
            except Exception as exc:  # a path that cannot run is reported with its reason
                rows.append((label, None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))

        # 4 + 5: end to end on the fastest inference path.
        e2e_ratio = float("nan")
        best = max(engines.items(), key=lambda kv: kv[1][1]) if engines else None
        if best is not None:
            provider, (engine, infer_tps) = best
            e2e = timed(lambda: overlapped_predict(engine, texts, args.batch, chunks), len(texts), args.repeats, sync)
            e2e_ratio = e2e / infer_tps
            rows.append((f"specialist engine on {provider}: tokenize + infer + softmax, overlapped", e2e, ""))
            proc = timed(lambda: processor_run(engine, texts, args.batch, chunks), len(texts), args.repeats, sync)
            rows.append((f"Specialist processor on {provider}: decode + batch + infer + Prediction", proc, ""))
            plain = timed(lambda: engine.predict(texts, max_batch_tokens=args.batch * args.seq,
                                                 max_batch_size=args.batch), len(texts), args.repeats, sync)
            rows.append((f"specialist engine on {provider}: predict(), not overlapped", plain, ""))

        infer_tps = best[1][1] if best else float("nan")
        lines = [f"specialist GPU paths vs torch, BERT-base-shaped classifier, seq {args.seq}, batch {args.batch}, "
                 f"{args.records} texts, {'fp16' if fp16 else 'fp32'} - {device_name}",
                 f"onnxruntime {ort.__version__}, torch {torch.__version__}",
                 f"{'path':<72} {'texts/s':>10}"]
        for name, tps, note in rows:
            lines.append(f"{name:<72} {tps:>10.1f}" if tps is not None else f"{name:<72} {'-':>10}  {note}")
        lines.append(f"RESULT gpu_infer_tps={infer_tps:.1f} torch_fp16_tps={torch_tps:.1f} "
                     f"gpu_infer_vs_torch={infer_tps / torch_tps:.3f} gpu_e2e_vs_infer={e2e_ratio:.3f}"
                     f"{' smoke=1' if args.cpu_smoke else ''}")
        report_text = "\n".join(lines)
        print("\n" + report_text, flush=True)
        out_dir = args.out_dir or (None if args.cpu_smoke else Path("results/gpu"))
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")
            target = out_dir / f"gpu_specialist_{slug}.txt"
            target.write_text(report_text + "\n" + json.dumps({"rows": rows}) + "\n", encoding="utf-8")
            say(f"wrote {target}")
        return 0 if best is not None else 4
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
