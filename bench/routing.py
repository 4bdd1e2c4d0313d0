"""Error-bounded routing through the real pipeline: does the stated error bound hold on the stream?

Per target error (0.05 and 0.10 by default), one run of the whole pipeline: the embedded broker,
three specialist services (MiniLM fine-tuned on three class-balanced slices of the packaged
insults corpus, built once and cached), the voter with ``policy: error-bounded``, the reviewer
calling ``mock-llm`` over HTTP. mock-llm is SIMULATED and answers with the gold label (accuracy
1.0), so the reviewer's label is the truth and the bound can be checked against it. The trainer is
off: the version set never changes, so every window is the same set's.

Records are produced at a steady rate from the held-out part of the corpus (never trained on).
While the stream flows, the voter's ``/metrics`` are scraped: the threshold and the upper bound it
reports. Afterwards, per window of decided records (decision order), the measured error of the
labels accepted without review (against gold) is compared with the upper bound the voter reported
when the window's last record was decided.

    .venv/bin/python bench/routing.py            # 3,000 records per target, about 10 minutes once built
    .venv/bin/python bench/routing.py --save     # also writes results/routing/

Ends with ``RESULT routing_error_at_05=... routing_error_at_10=... routing_share_at_05=...
routing_share_at_10=... routing_bound_covered=...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.demo.build import ensure_specialist
from autoannotator.demo.datasets import Example
from autoannotator.demo.harness import ReviewerSetting, pipeline_run
from autoannotator.demo.paper import INSULTS, split
from autoannotator.demo.stream import StreamResult, stream_steadily
from autoannotator.demo.tracker import Tracker, metric_sum
from autoannotator.stream.kafka import make_producer
from autoannotator.wire import now_ms
from evidence import ROOT, Evidence  # bench/evidence.py (the script's folder is on the path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=3000, help="records streamed per target")
    p.add_argument("--targets", default="0.05,0.10", help="comma-separated target errors")
    p.add_argument("--rate", type=float, default=40.0, help="records produced per second (steady)")
    p.add_argument("--window", type=int, default=500, help="decided records per coverage window")
    p.add_argument("--audit-rate", type=float, default=0.03, help="voter.audit_rate")
    p.add_argument("--min-accepted", type=int, default=50,
                   help="a window counts for coverage only with at least this many accepted labels")
    p.add_argument("--build-steps", type=int, default=60, help="optimiser steps per specialist build")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".autoannotator" / "bench" / "routing")
    p.add_argument("--save", action="store_true", help="write the table and JSON to results/routing/")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "routing")
    return p.parse_args(argv)


@dataclass
class Window:
    """One window of decided records."""

    decided: int
    accepted: int
    errors: int
    reported_upper: float
    threshold: float

    @property
    def error(self) -> float:
        """Measured error of the accepted labels (nan when none)."""
        return self.errors / self.accepted if self.accepted else math.nan


@dataclass
class Run:
    """What one target's run measured."""

    target: float
    records: int
    decided: int
    accepted: int
    accepted_errors: int
    llm_records: int
    audit_records: int
    rejected: int
    wall_s: float
    final_threshold: float
    final_upper: float
    windows: list[Window] = field(default_factory=list)

    @property
    def error(self) -> float:
        """Error of the labels accepted without review, against gold."""
        return self.accepted_errors / self.accepted if self.accepted else math.nan

    @property
    def share(self) -> float:
        """Share of decided records whose label came from the LLM (audits included)."""
        return self.llm_records / self.decided if self.decided else math.nan


def build_specialists(store: ModelStore, train: list[Example], steps: int, build_dir: Path) -> list[str]:
    """The three insults specialists (cached by recipe)."""
    from dataclasses import replace

    names = []
    for recipe in INSULTS.recipes:
        recipe = replace(recipe, name=f"routing-{recipe.name}", steps=steps)
        version, built, _ = ensure_specialist(store, recipe, train, INSULTS.labels, build_dir)
        print(f"  specialist {recipe.name}: {'built' if built else 'cached'} {version}", flush=True)
        names.append(recipe.name)
    return names


def pipeline_config(target: float, names: list[str], store_uri: str, llm_url: str, run_dir: Path,
                    audit_rate: float) -> PipelineConfig:
    """The pipeline of one run: error-bounded voter, LLM reviewer, trainer off."""
    return parse_config({
        "task": INSULTS.task(),
        "kafka": {"topic_prefix": f"routing{now_ms()}.", "partitions": 3, "session_timeout_ms": 3000},
        "store": {"uri": store_uri},
        "specialists": [{"name": n, "max_length": 64, "threads": 1, "max_batch_size": 32, "max_wait_ms": 10}
                        for n in names],
        "voter": {"policy": "error-bounded", "target_error": target, "audit_rate": audit_rate,
                  "join_timeout_s": 30, "quorum": 2},
        "reviewer": {"mode": "llm", "llm": {"base_url": llm_url, "model": "gpt-4o-mini", "batch_size": 10,
                                            "concurrency": 4,
                                            "prices": {"gpt-4o-mini": {"input_per_mtok": 0.15,
                                                                       "output_per_mtok": 0.60}}},
                     "cache_path": str(run_dir / "llm-cache.sqlite"),
                     "human": {"queue_path": str(run_dir / "review-queue.sqlite")}},
        "trainer": {"enabled": False, "pool_path": str(run_dir / "pool.sqlite")},
        "data_dir": str(run_dir),
    }, "routing bench config")


def run_target(target: float, stream: list[Example], names: list[str], store: ModelStore,
               args: argparse.Namespace) -> Run:
    """Stream the records through the pipeline (the harness's ``pipeline_run``) at one target error; measure."""
    run_dir = args.data_dir / "runs" / f"target-{target:.2f}-{time.strftime('%Y%m%d-%H%M%S')}"
    gold = {e.id: e.label for e in stream}
    gauges: list[tuple[int, float, float]] = []  # (decided so far, upper bound, threshold)
    started = time.monotonic()
    with pipeline_run(lambda url: pipeline_config(target, names, store.uri, url, run_dir, args.audit_rate), stream,
                      run_dir, labels=INSULTS.labels, reviewer=ReviewerSetting(1.0), latency_ms=20.0,
                      timeout_s=600 + len(stream) / args.rate) as run:

        def sample(result: StreamResult, note: str) -> None:
            """The voter's reported bound and threshold as the stream flows (every 25 records, then while draining)."""
            values = run.metrics("voter")
            if values:
                gauges.append((len(run.tracker.outcomes), metric_sum(values, "autoannotator_voter_error_upper_bound"),
                               metric_sum(values, "autoannotator_voter_threshold")))
            sys.stderr.write(f"\r  target {target:.2f}: sent {len(result.order)}/{len(stream)}, decided "
                             f"{run.tracker.decided(set(result.order))} {note:<10}")

        producer = make_producer(run.config.kafka, run.supervisor.bootstrap)
        stream_steadily(producer, run.config.kafka.topic("texts"), stream, run.tracker, rate=args.rate,
                        timeout_s=run.deadline - time.monotonic(), check=run.supervisor.check, progress=sample)
        sample(StreamResult(order=[e.id for e in stream]), "done")
        sys.stderr.write("\n")
        return measure(target, stream, gold, run.tracker, gauges, time.monotonic() - started, args)


def measure(target: float, stream: list[Example], gold: dict[str, str], tracker: Tracker,
            gauges: list[tuple[int, float, float]], wall_s: float, args: argparse.Namespace) -> Run:
    """Accepted-label error, LLM share and per-window coverage, from the outcomes in decision order."""
    order = [rid for rid in tracker.outcomes if rid in gold]  # insertion order = order read from the topics
    run = Run(target, len(stream), len(order), 0, 0, 0, 0, 0, wall_s,
              gauges[-1][2] if gauges else math.nan, gauges[-1][1] if gauges else math.nan)
    for start in range(0, len(order), args.window):
        chunk = order[start:start + args.window]
        accepted = errors = 0
        for rid in chunk:
            outcome = tracker.outcomes[rid]
            if outcome.source == "consensus":
                accepted += 1
                errors += outcome.label != gold[rid]
            elif outcome.source in ("llm", "human"):
                run.llm_records += 1
                hard = tracker.hard.get(rid)
                run.audit_records += bool(hard is not None and hard.reason == "audit")
            else:
                run.rejected += 1
        run.accepted += accepted
        run.accepted_errors += errors
        end = start + len(chunk)
        # The bound the voter reported when this window's last record had been decided.
        reported = [(upper, threshold) for decided, upper, threshold in gauges if decided >= end]
        upper, threshold = reported[0] if reported else (gauges[-1][1:] if gauges else (math.nan, math.nan))
        run.windows.append(Window(len(chunk), accepted, errors, upper, threshold))
    return run


def table(runs: list[Run], args: argparse.Namespace) -> str:
    """The per-target and per-window tables (markdown)."""
    lines = ["| target | records | accepted | error of accepted (vs gold) | LLM share (audit incl.) | audit records "
             "| final threshold | final upper bound | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.target:.2f} | {r.decided} | {r.accepted} | {r.error:.4f} | {r.share:.3f} | "
                     f"{r.audit_records} | {r.final_threshold:.2f} | {r.final_upper:.4f} | {r.wall_s:.0f} |")
    lines += ["", f"Windows of {args.window} decided records (coverage counts windows with at least "
              f"{args.min_accepted} accepted labels):", "",
              "| target | window | accepted | measured error | reported upper bound | threshold | covered |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        for i, w in enumerate(r.windows):
            counted = w.accepted >= args.min_accepted
            covered = "yes" if counted and w.reported_upper >= w.error else ("no" if counted else "n/a")
            lines.append(f"| {r.target:.2f} | {i + 1} | {w.accepted} | {w.error:.4f} | {w.reported_upper:.4f} | "
                         f"{w.threshold:.2f} | {covered} |")
    return "\n".join(lines)


def coverage(runs: list[Run], min_accepted: int) -> float:
    """Share of counted windows whose reported upper bound is at least their measured error."""
    counted = [w for r in runs for w in r.windows if w.accepted >= min_accepted]
    return sum(w.reported_upper >= w.error for w in counted) / len(counted) if counted else math.nan


def _key(target: float) -> str:
    return f"{round(target * 100):02d}"


def main(argv: Sequence[str] | None = None) -> int:
    """Build once, run each target, print the tables and the RESULT line."""
    args = parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]
    print(f"routing bench: insults (toxicity, binary), {args.records} records per target, targets {targets}, "
          f"audit_rate {args.audit_rate}, {args.rate:.0f} records/s; reviewer SIMULATED (mock-llm, accuracy 1.0 = "
          "gold)", flush=True)
    examples = INSULTS.load()
    parts = split(examples, calibration=0, test=args.records, seed=0, heldout_share=0.6)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    store = ModelStore(f"file://{(args.data_dir / 'models').resolve()}")
    names = build_specialists(store, parts.train, args.build_steps, args.data_dir / "build")
    runs = [run_target(t, parts.test, names, store, args) for t in targets]
    text = table(runs, args)
    print(text)
    covered = coverage(runs, args.min_accepted)
    result = " ".join([*(f"routing_error_at_{_key(r.target)}={r.error:.4f}" for r in runs),
                       *(f"routing_share_at_{_key(r.target)}={r.share:.4f}" for r in runs),
                       f"routing_bound_covered={covered:.3f}"])
    print(f"RESULT {result}", flush=True)
    if args.save:
        evidence = Evidence("routing", args.out, sys.argv[1:] if argv is None else list(argv), save=False)
        args.out.mkdir(parents=True, exist_ok=True)
        header = f"{evidence.header()} Reviewer SIMULATED (mock-llm at accuracy 1.0).\n\n"
        (args.out / "routing.md").write_text(header + text + f"\n\nRESULT {result}\n")
        (args.out / "routing.json").write_text(json.dumps(
            {**evidence.meta(), "runs": [{**asdict(r), "error": r.error, "share": r.share} for r in runs],
             "covered": covered}, indent=2, default=str))
        print(f"saved {args.out / 'routing.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
