"""The one pipeline harness: runs of the real pipeline, used by the demo, the paper table and the benches.

:func:`pipeline_run` is how every run starts and stops: ``mock-llm`` as a child process answering
from the stream's gold labels at a reviewer setting (independent or difficulty-correlated errors)
unless a real endpoint is given, the run's config written to ``pipeline.yaml``, the services under
the :class:`~autoannotator.supervisor.Supervisor` (the embedded broker unless the config names
one, the specialist services, the voter, the reviewer over HTTP, the trainer when the config
enables it) started on a block of free metrics ports (retried on a clash: a shared machine) and
waited for until each answers, and a :class:`Tracker` reading the outcomes. Users: ``autoannotator
demo`` and the paper table's continual row (streaming at a steady rate, :mod:`autoannotator.demo.stream`),
``bench/continual.py``, ``bench/routing.py`` and the paper table's method rows below.

The paper table: every method as one run per (method, reviewer setting) on a shared broker (a
fresh topic prefix each); the records are produced at once; the row is what came out of the
``labels`` topic:

- accuracy of the final labels against gold, the share of records whose label came from the LLM,
  the LLM calls the reviewer made (its ``autoannotator_llm_requests_total``), the tokens the
  labels carry and their price;
- ``wall_s``: measured, from the first record produced to the last outcome read;
  ``startup_s``: services start to ready (apart, since it does not grow with the stream).

Methods (``voter`` section of each run):

- ``llm`` (LLM alone): ``policy: vote`` with ``audit_rate: 1.0``: every record the specialists
  agree on is audited and every other one is hard, so the reviewer labels every record;
- ``vote`` (the paper): ``policy: vote`` at ``eps``, no audit; ``vote_majority``: eps 0.5 (2 of 3);
- ``soft``: temperatures and ``tau`` fitted on a labelled calibration split for the LLM share the
  ``vote`` run measured (the matched share), no audit;
- ``error_bounded``: ``policy: error-bounded`` at ``target_error`` with ``audit_rate``. It
  certifies thresholds from audit outcomes, which a burst of records produced at once would all
  outrun, so its run first streams the stage's ``warmup`` records (the labelled calibration split
  ``soft`` is fitted on), every one reviewed while the voter is uncertified, and waits until the
  voter has read their outcomes; the row measures only the stream after that (the warm-up's LLM
  calls are kept apart: ``warmup_llm_calls``).

Each specialist alone is read from the ``predictions`` topic of the first run (its argmax label).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from confluent_kafka import Producer

from autoannotator.config import PipelineConfig, parse_config
from autoannotator.demo.datasets import Example
from autoannotator.demo.report import accuracy, price
from autoannotator.demo.tracker import Tracker, metric_sum, scrape
from autoannotator.exceptions import AutoAnnotatorError
from autoannotator.mockllm.process import MockLLMProcess, write_gold_csv
from autoannotator.stream.broker import EmbeddedBroker, free_port
from autoannotator.stream.kafka import make_producer
from autoannotator.supervisor import Supervisor
from autoannotator.wire import TextRecord, encode, now_ms

# A real OpenAI-compatible endpoint for the demo's reviewer; never passed on to the services of a
# harness run (their config names the endpoint).
LLM_URL_ENV = "AUTOANNOTATOR_LLM_URL"

PRICES = {
    "gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
    "gpt-3.5-turbo": {"input_per_mtok": 0.50, "output_per_mtok": 1.50},
}


class HarnessError(AutoAnnotatorError):
    """A pipeline run of the harness did not finish."""


@dataclass(frozen=True)
class ReviewerSetting:
    """How good the (simulated) LLM is, and whether its errors follow the records' difficulty."""

    accuracy: float
    error_mode: str = "independent"

    @property
    def key(self) -> str:
        """``0.92`` or ``0.92-hard`` (difficulty-correlated)."""
        return f"{self.accuracy:.2f}" + ("-hard" if self.error_mode == "difficulty" else "")

    @property
    def title(self) -> str:
        """Human form for tables."""
        kind = "errs on hard records" if self.error_mode == "difficulty" else "independent errors"
        return f"LLM accuracy {self.accuracy:.2f}, {kind}"


SWEEP = (ReviewerSetting(0.70), ReviewerSetting(0.80), ReviewerSetting(0.92), ReviewerSetting(0.92, "difficulty"))


def parse_sweep(text: str) -> tuple[ReviewerSetting, ...]:
    """``0.70,0.80,0.92,0.92-hard`` -> settings (``-hard``: difficulty-correlated errors)."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        hard = part.endswith("-hard")
        try:
            value = float(part.removesuffix("-hard"))
        except ValueError:
            raise HarnessError(f"--reviewers: {part!r} is not an accuracy (e.g. 0.92 or 0.92-hard)") from None
        if not 0 <= value <= 1:
            raise HarnessError(f"--reviewers: accuracy {value} must be between 0 and 1")
        out.append(ReviewerSetting(value, "difficulty" if hard else "independent"))
    return tuple(out)


@dataclass(frozen=True)
class Method:
    """One routing configuration of the voter."""

    name: str
    title: str
    voter: dict
    # Stream the stage's warm-up records first (reviewed, not counted in the row): a router that
    # learns from audit outcomes starts from what a running pipeline would know, as ``soft`` does
    # from its calibration split.
    warmup: bool = False


def base_methods(eps: float, target_error: float | Sequence[float], audit_rate: float) -> dict[str, Method]:
    """The methods whose voter section is known before any run (``soft`` is fitted after ``vote``).

    Several error targets give one error-bounded method each, ``error_bounded_<target>``; one
    target gives ``error_bounded``.
    """
    targets = [target_error] if isinstance(target_error, int | float) else list(target_error)
    methods = {
        "llm": Method("llm", "LLM alone (every record reviewed)", {"policy": "vote", "eps": eps, "audit_rate": 1.0}),
        "vote": Method("vote", f"AutoAnnotator vote (eps {eps:g})", {"policy": "vote", "eps": eps, "audit_rate": 0.0}),
        "vote_majority": Method("vote_majority", "AutoAnnotator vote (2 of 3)",
                                {"policy": "vote", "eps": 0.5, "audit_rate": 0.0}),
    }
    for target in targets:
        name = "error_bounded" if len(targets) == 1 else f"error_bounded_{target:g}"
        methods[name] = Method(name, f"AutoAnnotator error-bounded (target {target:g})",
                               {"policy": "error-bounded", "target_error": target, "audit_rate": audit_rate},
                               warmup=True)
    return methods


@dataclass
class Stage:
    """What every run of one dataset shares."""

    dataset: str
    task: dict
    specialists: list[str]
    store_uri: str
    stream: list[Example]
    work: Path
    bootstrap: str
    max_length: int = 64
    llm_model: str = "gpt-3.5-turbo"
    latency_ms: float = 200.0
    batch_size: int = 10
    concurrency: int = 4
    timeout_s: float = 1800.0
    difficulty: dict[str, float] = field(default_factory=dict)
    progress: bool = True
    # Labelled records a warm-up method streams before ``stream`` (see :attr:`Method.warmup`).
    warmup: list[Example] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """The task's labels."""
        return list(self.task["labels"])


@dataclass
class Row:
    """One method at one reviewer setting on one dataset, measured through the pipeline."""

    dataset: str
    method: str
    title: str
    reviewer: str
    accuracy: float
    share: float
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    wall_s: float
    startup_s: float
    records: int
    decided: int
    rejected: int
    pipeline: bool = True
    note: str = ""
    # Records streamed before the measured ones, and the LLM calls they took (not in the row's figures).
    warmup_records: int = 0
    warmup_llm_calls: int = 0

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict:
        """JSON-ready form."""
        from dataclasses import asdict

        return {**asdict(self), "tokens": self.tokens}

    def result_line(self) -> str:
        """One ``RESULT paper ...`` line."""
        return (f"RESULT paper dataset={self.dataset} method={self.method} reviewer={self.reviewer} "
                f"accuracy={self.accuracy:.4f} share={self.share:.4f} llm_calls={self.llm_calls} "
                f"tokens={self.tokens} cost_usd={self.cost_usd:.6f} wall_s={self.wall_s:.1f}")


def pipeline_config(stage: Stage, voter: dict, llm_url: str, run_dir: Path) -> PipelineConfig:
    """The config of one run: the method's voter, the reviewer on mock-llm, no trainer."""
    return parse_config({
        "task": stage.task,
        "kafka": {"bootstrap_servers": stage.bootstrap, "topic_prefix": f"paper{now_ms()}.", "partitions": 2,
                  "session_timeout_ms": 3000},
        "store": {"uri": stage.store_uri},
        "specialists": [{"name": n, "max_length": stage.max_length, "threads": 1, "max_batch_size": 32,
                         "max_wait_ms": 10} for n in stage.specialists],
        "voter": {"join_timeout_s": 60, "quorum": 2, **voter},
        "reviewer": {"mode": "llm",
                     "llm": {"base_url": llm_url, "model": stage.llm_model, "batch_size": stage.batch_size,
                             "concurrency": stage.concurrency, "prices": PRICES},
                     "cache_path": str(run_dir / "llm-cache.sqlite"),
                     "human": {"queue_path": str(run_dir / "review-queue.sqlite")}},
        "trainer": {"enabled": False, "pool_path": str(run_dir / "pool.sqlite")},
        "data_dir": str(run_dir),
    }, f"harness config ({run_dir.name})")


def _free_block(n: int, tries: int = 50) -> int:
    """A base port whose next ``n`` ports are all free now (the supervisor numbers metrics ports from it)."""
    import socket

    for _ in range(tries):
        base = free_port()
        if base + n >= 65535:
            continue
        held = []
        try:
            for port in range(base, base + n):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise HarnessError(f"no block of {n} free ports found")


def start_pipeline(config: PipelineConfig, config_path: Path, run_dir: Path, deadline: float,
                   attempts: int = 3) -> Supervisor:
    """Start the services (the trainer when the config enables it) and wait until each answers; a start
    that fails (a metrics port taken by another process between choosing and binding it, on a shared
    machine) is retried on other ports."""
    env = {k: v for k, v in os.environ.items() if k != LLM_URL_ENV}
    for attempt in range(1, attempts + 1):
        supervisor = Supervisor(config, config_path, metrics_base_port=_free_block(len(config.specialists) + 3),
                                env=env, log_dir=run_dir / "logs")
        try:
            supervisor.start()
            _wait_ready(supervisor, deadline)
            return supervisor
        except (RuntimeError, HarnessError) as exc:
            supervisor.stop()
            if attempt == attempts:
                raise HarnessError(f"the pipeline did not start after {attempts} attempts: {exc}") from exc
            sys.stderr.write(f"\n  start failed ({exc}); retrying on other ports\n")
    raise AssertionError("unreachable")


def _wait_ready(supervisor: Supervisor, deadline: float) -> None:
    """Until every child answers on /metrics (services loaded)."""
    for child in supervisor.children:
        while not scrape(f"http://127.0.0.1:{child.metrics_port}/metrics", 1.0):
            supervisor.check()
            if time.monotonic() > deadline:
                raise HarnessError(f"{child.name} did not start (see its log)")
            time.sleep(0.3)


@dataclass
class PipelineRun:
    """A running pipeline: its config, services, outcomes and (when simulated) mock-llm."""

    config: PipelineConfig
    supervisor: Supervisor
    tracker: Tracker
    run_dir: Path
    # time.monotonic() by which the run must end; seconds from start to every service answering.
    deadline: float
    startup_s: float
    llm_url: str
    simulated: bool

    def metrics(self, service: str) -> dict:
        """One service's /metrics now (empty when it does not answer)."""
        return scrape(f"http://127.0.0.1:{self.supervisor.child(service).metrics_port}/metrics", 2.0)

    def llm_calls(self) -> int:
        """LLM requests the reviewer made so far."""
        return int(metric_sum(self.metrics("reviewer"), "autoannotator_llm_requests_total"))


def serving_versions(config: PipelineConfig) -> set[tuple[str, str]]:
    """``(specialist, version)`` current in the store before a run (none for a cold start)."""
    from autoannotator.artifacts.store import ModelStore

    store = ModelStore(config.store.uri)
    found = {(spec.name, store.current(spec.name)) for spec in config.specialists}
    return {(name, version) for name, version in found if version}


@contextmanager
def pipeline_run(make_config: Callable[[str], PipelineConfig], records: Sequence[Example], run_dir: Path, *,
                 labels: Sequence[str], reviewer: ReviewerSetting | None = None, latency_ms: float = 200.0,
                 difficulty: Mapping[str, float] | None = None, llm_url: str | None = None,
                 timeout_s: float = 1800.0) -> Iterator[PipelineRun]:
    """Run the pipeline ``make_config(reviewer_url)`` describes for ``records``; stop everything after the block.

    Without ``llm_url``, ``mock-llm`` answers from the records' gold labels at ``reviewer``
    (default: accuracy 0.92, independent errors; ``difficulty`` scores are needed for the
    difficulty-correlated mode). ``timeout_s`` bounds the whole run (:attr:`PipelineRun.deadline`).
    """
    reviewer = reviewer or ReviewerSetting(0.92)
    began = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    mock: MockLLMProcess | None = None
    if llm_url is None:
        if reviewer.error_mode == "difficulty" and not difficulty:
            raise HarnessError("difficulty-correlated reviewer without difficulty scores")
        gold_csv = write_gold_csv(run_dir / "gold.csv", records,
                                  difficulty if reviewer.error_mode == "difficulty" else None)
        mock = MockLLMProcess(gold_csv, list(labels), reviewer.accuracy, latency_ms, run_dir / "mock-llm.log",
                              error_mode=reviewer.error_mode)
        llm_url = mock.url
    supervisor: Supervisor | None = None
    tracker: Tracker | None = None
    try:
        config = make_config(llm_url)
        serving = serving_versions(config)
        config_path = run_dir / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        deadline = began + timeout_s
        supervisor = start_pipeline(config, config_path, run_dir, deadline)
        tracker = Tracker(config, supervisor.bootstrap, serving_at_start=serving)
        yield PipelineRun(config, supervisor, tracker, run_dir, deadline, time.monotonic() - began, llm_url,
                          mock is not None)
    finally:
        if tracker is not None:
            tracker.close()
        if supervisor is not None:
            supervisor.stop()
        if mock is not None:
            mock.stop()


def run_method(stage: Stage, method: Method, reviewer: ReviewerSetting,
               on_tracker: Callable[[Tracker], None] | None = None) -> Row:
    """Stream the stage's records through the pipeline configured for ``method``; measure the row."""
    run_dir = stage.work / "runs" / f"{method.name}-{reviewer.key}-{now_ms()}"
    gold = {e.id: e.label for e in stage.stream}
    warmup = stage.warmup if method.warmup else []
    if set(gold) & {e.id for e in warmup}:
        raise HarnessError("the warm-up records overlap the measured ones")
    with pipeline_run(lambda url: pipeline_config(stage, method.voter, url, run_dir), [*warmup, *stage.stream],
                      run_dir, labels=stage.labels, reviewer=reviewer, latency_ms=stage.latency_ms,
                      difficulty=stage.difficulty, timeout_s=stage.timeout_s) as run:
        producer = make_producer(run.config.kafka, run.supervisor.bootstrap)
        warmup_calls = 0
        if warmup:
            _stream(stage, run, producer, warmup, f"{method.name} warm-up @ {reviewer.key}")
            _wait_audited(run, sum(run.tracker.outcomes[e.id].source == "llm" for e in warmup))
            warmup_calls = run.llm_calls()
        started = time.monotonic()
        _stream(stage, run, producer, stage.stream, f"{method.name} @ {reviewer.key}")
        wall_s = time.monotonic() - started
        llm_calls = run.llm_calls() - warmup_calls
        if on_tracker is not None:
            on_tracker(run.tracker)
        row = _row(stage, method, reviewer, run.tracker, gold, llm_calls, wall_s, run.startup_s)
        row.warmup_records, row.warmup_llm_calls = len(warmup), warmup_calls
        if warmup:
            row.note += (f"; first {len(warmup)} warm-up records streamed and reviewed, "
                         "their LLM calls not counted (warmup_llm_calls in the JSON)")
        return row


def _stream(stage: Stage, run: PipelineRun, producer: Producer, records: Sequence[Example], what: str) -> None:
    """Produce ``records`` to ``texts`` at once and wait until every one is decided."""
    topic = run.config.kafka.topic("texts")
    for example in records:
        producer.produce(topic, encode(TextRecord(id=example.id, text=example.text, created_ms=now_ms())),
                         key=example.id)
        producer.poll(0)
    if producer.flush(30):
        raise HarnessError("the broker did not acknowledge the records")
    ids = {e.id for e in records}
    while (done := run.tracker.decided(ids)) < len(ids):
        run.supervisor.check()
        run.tracker.poll(0.3)
        if stage.progress:
            sys.stderr.write(f"\r  {stage.dataset} {what}: {done}/{len(ids)} decided")
        if time.monotonic() > run.deadline:
            raise HarnessError(f"{what}: timed out with {len(ids) - done} undecided")
    if stage.progress:
        sys.stderr.write("\n")


def _wait_audited(run: PipelineRun, reviewed: int, timeout_s: float = 60.0, settle_s: float = 3.0) -> None:
    """Wait until the voter has read a warm-up's audit outcomes back into its window.

    A record is decided when its label is written; the voter's audit follower reads the outcome
    from the ``reviewed`` topic a moment later. Every one of the ``reviewed`` records is an audit
    sample while no threshold is certified; once one is, only the sampled audits are, so the wait
    also ends when the voter's count has not moved for ``settle_s``. Raises when it never moved
    within ``timeout_s``.
    """
    end = min(run.deadline, time.monotonic() + timeout_s)
    seen, moved = -1.0, time.monotonic()
    while time.monotonic() < end:
        now = metric_sum(run.metrics("voter"), "autoannotator_voter_audit_outcomes_total")
        if now >= reviewed or (now > 0 and now == seen and time.monotonic() - moved >= settle_s):
            return
        if now != seen:
            seen, moved = now, time.monotonic()
        time.sleep(0.3)
    raise HarnessError(f"the voter read {max(seen, 0):.0f} of the warm-up's {reviewed} reviewed records' outcomes "
                       f"within {timeout_s:.0f}s")


def _row(stage: Stage, method: Method, reviewer: ReviewerSetting, tracker: Tracker, gold: dict[str, str],
         llm_calls: int, wall_s: float, startup_s: float) -> Row:
    ids = [rid for rid in gold if rid in tracker.outcomes]
    outcomes = [tracker.outcomes[rid] for rid in ids]
    sources = Counter(o.source for o in outcomes)
    prompt = sum(o.prompt_tokens for o in outcomes)
    completion = sum(o.completion_tokens for o in outcomes)
    from autoannotator.config import LLMPrice

    cost = price(prompt, completion, LLMPrice(**PRICES[stage.llm_model]))
    reviewed = sources["llm"] + sources["human"]
    return Row(stage.dataset, method.name, method.title, reviewer.key,
               accuracy([(tracker.outcomes[rid].label, gold[rid]) for rid in ids]),
               reviewed / len(ids) if ids else math.nan, llm_calls, prompt, completion, cost, wall_s, startup_s,
               len(gold), len(ids), sources["rejected"], note=json.dumps(method.voter, sort_keys=True))


def specialist_rows(stage: Stage, tracker: Tracker, source: Row) -> list[Row]:
    """Each specialist alone, from the argmax labels it put on the ``predictions`` topic in ``source``'s run."""
    gold = {e.id: e.label for e in stage.stream}
    rows = []
    for name in stage.specialists:
        pairs = [(tracker.predictions.get(rid, {}).get(name), label) for rid, label in gold.items()]
        rows.append(Row(stage.dataset, f"slm:{name}", f"SLM {name} alone", "-", accuracy(pairs), 0.0, 0, 0, 0, 0.0,
                        source.wall_s, source.startup_s, len(gold), sum(p is not None for p, _ in pairs), 0,
                        note=f"its predictions in the {source.method} run at {source.reviewer} (same wall time)"))
    return rows


def soft_method(stage: Stage, calibration: list[Example], call_rate: float) -> Method:
    """``soft`` with temperatures and ``tau`` fitted on ``calibration`` for ``call_rate`` (vote's measured share)."""
    from autoannotator.demo.run import calibrate_soft_routing

    config = pipeline_config(stage, {"policy": "soft"}, "http://127.0.0.1:9/v1", stage.work)
    calibrate_soft_routing(config, calibration, min(max(call_rate, 0.0), 1.0))
    voter = {"policy": "soft", "tau": config.voter.tau, "audit_rate": 0.0,
             "temperatures": {k: dict(v) for k, v in config.voter.temperatures.items()}}
    return Method("soft", f"AutoAnnotator soft (tau {config.voter.tau:.3f}, vote's share {call_rate:.2f})", voter)


def difficulty_scores(stage: Stage) -> dict[str, float]:
    """The served specialists' disagreement per record of the stream: 1 - the top of their mean probabilities.

    Only the stream's records get a score, so mock-llm picks the same wrong answers among them in
    every run, with or without a warm-up; a warm-up's records are answered with independent errors
    at the same accuracy.

    Gold is not used. The pessimistic choice for routing: the LLM errs most on the very records the
    specialists are unsure about, which are the ones a router sends to it.
    """
    import numpy as np

    from autoannotator.voter.calibrate import specialist_scores

    config = pipeline_config(stage, {"policy": "soft"}, "http://127.0.0.1:9/v1", stage.work)
    texts = [e.text for e in stage.stream]
    probs = [specialist_scores(config, name, texts, None)[0] for name in stage.specialists]
    top = np.mean(probs, axis=0).max(axis=1)
    return {e.id: float(1 - t) for e, t in zip(stage.stream, top, strict=True)}


def evaluate(stage: Stage, calibration: list[Example], reviewers: Sequence[ReviewerSetting],
             methods: dict[str, Method], order: Sequence[str], log: Callable[[str], None] = print) -> list[Row]:
    """Every method in ``order`` at every reviewer setting (``soft`` needs ``vote`` before it)."""
    if any(r.error_mode == "difficulty" for r in reviewers) and not stage.difficulty:
        stage.difficulty = difficulty_scores(stage)
    rows: list[Row] = []
    first: dict[str, Tracker] = {}
    for reviewer in reviewers:
        for name in order:
            if name == "soft" and "soft" not in methods:
                vote = next((r for r in rows if r.method == "vote"), None)
                if vote is None:
                    raise HarnessError("soft needs the vote run first (its share is the one soft is matched to)")
                methods["soft"] = soft_method(stage, calibration, vote.share)
                log(f"  soft fitted: {methods['soft'].title}")
            keep = (lambda t: first.setdefault("tracker", t)) if not first else None
            row = run_method(stage, methods[name], reviewer, keep)
            if keep is not None:
                rows.extend(specialist_rows(stage, first["tracker"], row))
            rows.append(row)
            log(f"  {row.result_line()}")
    return rows


class SharedBroker:
    """One embedded broker for every run of a harness (each run uses its own topic prefix)."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.broker = EmbeddedBroker(log_path=log_path).start()
        self.bootstrap = self.broker.bootstrap

    def close(self) -> None:
        """Stop the broker."""
        self.broker.stop()
