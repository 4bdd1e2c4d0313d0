"""``autoannotator train``: k specialists for the task from a labelled file (or the first N reviewed records).

This module parses arguments and prints; the work is :func:`~autoannotator.trainer.build.train_specialists`.
The config is then updated in place (unless ``--no-write``): ``specialists`` become the trained
ones and ``voter.temperatures`` their per-version temperatures; under ``policy: soft`` ``tau`` is
solved on the held-out split for ``--target-error``.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

import yaml

from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.runtime import bootstrap_for, load
from autoannotator.trainer.build import (
    PACKAGED_BASE,
    BuildSettings,
    Built,
    TrainResult,
    progress_bar,
    resolve_base,
    train_specialists,
)
from autoannotator.trainer.exceptions import TrainerError
from autoannotator.trainer.labelled import read_labelled, read_reviewed

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    p = subparsers.add_parser(
        "train", help="build k specialists for the task from a labelled CSV/JSONL file (offline)",
        description="Fine-tune k copies of a base encoder (the packaged MiniLM, or local Hugging Face folders) on "
        "bootstrap samples of a labelled file, export each to ONNX (parity-checked), add each to the model store "
        "as the version it serves, and calibrate the voter on a held-out split. Fully offline.",
    )
    p.add_argument("--config", required=True, type=Path, help="pipeline config (task.labels, store)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="labelled file: CSV with text,label columns, or JSONL")
    source.add_argument("--from-stream", type=int, metavar="N",
                        help="the first N records the pipeline's reviewer labelled (the reviewed topic), e.g. "
                        "after a cold start")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--k", type=int, default=3, help="number of specialists (default 3)")
    p.add_argument("--names", default=None,
                   help="comma-separated specialist names (default: <base>-1..k)")
    p.add_argument("--base", action="append", default=None, metavar="DIR",
                   help=f"base encoder: '{PACKAGED_BASE}' (the packaged all-MiniLM-L6-v2, default) or a local Hugging "
                   "Face folder; repeat to give specialists different bases (used in turn)")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps per specialist (default 100)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--precision", choices=["auto", "fp32", "int8", "fp16"], default="auto",
                   help="artifact precision; auto: fp16 when trained on CUDA, else int8")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--holdout", type=float, default=0.2, help="share of rows held out for calibration (default 0.2)")
    p.add_argument("--target-error", type=float, default=0.05,
                   help="under policy soft: solve tau for this error of accepted labels on the held-out split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="do not update the config file")
    p.set_defaults(func=run_train)


def specialist_names(args: argparse.Namespace, bases: list[Path]) -> list[str]:
    """The names given with --names, else ``<first base>-1..k`` made valid."""
    if args.names:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
    else:
        if args.k < 1:
            raise TrainerError("--k must be at least 1")
        stem = PACKAGED_BASE if not args.base or args.base[0] == PACKAGED_BASE else bases[0].name
        stem = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")[:30] or "specialist"
        names = [f"{stem}-{i + 1}" for i in range(args.k)]
    bad = [n for n in names if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", n)]
    if bad or len(set(names)) != len(names):
        raise TrainerError(f"--names: need distinct names of lower-case letters, digits, - and _ (got {names})")
    return names


def run_train(args: argparse.Namespace) -> int:
    """Read the labelled file, build and publish the specialists, print held-out accuracy, update the config."""
    config = load(args)
    if args.data is not None:
        rows = read_labelled(args.data, config.task.labels, text_column=args.text_column,
                             label_column=args.label_column)
        origin = str(args.data)
    else:
        rows = read_reviewed(config, bootstrap_for(config), args.from_stream)
        origin = f"the first {args.from_stream} reviewed records"
    bases = [resolve_base(b) for b in (args.base or [PACKAGED_BASE])]
    names = specialist_names(args, bases)
    settings = BuildSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             max_length=args.max_length, precision=args.precision, device=args.device)
    device = settings.resolved_device()
    print(f"train: {len(rows)} labelled rows from {origin}; {len(names)} specialists on {device} "
          f"({settings.resolved_precision(device)}), base {', '.join(str(b) for b in bases)}", flush=True)
    store = ModelStore(config.store.uri, config.store.options)

    def on_built(built: Built) -> None:
        accuracy = "n/a" if built.heldout_accuracy is None else f"{built.heldout_accuracy:.4f}"
        print(f"  {built.name} {built.version} ({built.precision}): held-out accuracy {accuracy}, "
              f"T {built.temperature}, parity {built.parity_max_abs_diff}", flush=True)

    result = train_specialists(store, rows, config.task.labels, names, bases, settings,
                               Path(config.data_dir) / "train", holdout_fraction=args.holdout, seed=args.seed,
                               on_step=lambda name: progress_bar(name, args.steps), on_built=on_built)
    print(format_result(result))
    if not args.no_write:
        note = write_trained(args.config, config, result, args.target_error)
        print(f"wrote specialists {names} and voter.temperatures to {args.config}" + (f"; {note}" if note else ""))
    return 0


def format_result(result: TrainResult) -> str:
    """The per-specialist table: version, precision, held-out accuracy, temperature."""
    lines = [f"trained on {result.train_rows} rows, held out {result.heldout_rows}", "",
             f"{'specialist':<20} {'version':<8} {'precision':<9} {'held-out acc':>12} {'T':>8}"]
    for b in result.built:
        acc = "n/a" if b.heldout_accuracy is None else f"{b.heldout_accuracy:.4f}"
        lines.append(f"{b.name:<20} {b.version:<8} {b.precision:<9} {acc:>12} {b.temperature or 1.0:>8.4f}")
    return "\n".join(lines)


def write_trained(path: Path, config: PipelineConfig, result: TrainResult, target_error: float) -> str:
    """Make the trained specialists the config's, with their temperatures; solve tau under soft. Returns a note."""
    from autoannotator.calibration import mean_probs, solve_tau_for_error
    from autoannotator.exceptions import CalibrationError

    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    previous = {s.get("name"): s for s in doc.get("specialists") or [] if isinstance(s, dict)}
    doc["specialists"] = [{**{k: v for k, v in previous.get(b.name, {}).items() if k != "label_map"}, "name": b.name}
                          for b in result.built]
    voter = doc.setdefault("voter", {}) or {}
    doc["voter"] = voter
    voter["temperatures"] = result.temperatures()
    k = len(result.built)
    # A config planned without specialists (plan --own) has no quorum worth keeping: 2 of k, as for any plan.
    voter["quorum"] = min(int(voter.get("quorum", 2)) if previous else 2, k)
    note = ""
    if config.voter.policy == "soft" and result.heldout_probs and result.heldout_targets is not None:
        names = [b.name for b in result.built]
        mean = mean_probs([result.heldout_probs[n] for n in names], [b.temperature or 1.0 for b in result.built])
        try:
            point = solve_tau_for_error(mean, result.heldout_targets, target_error)
            voter["tau"] = round(float(point.tau), 6)
            note = (f"voter.tau {voter['tau']} (held-out: review rate {point.call_rate:.3f}, accepted accuracy "
                    f"{point.accuracy:.4f})")
        except CalibrationError as exc:
            note = f"voter.tau kept at {voter.get('tau', config.voter.tau)}: {exc}"
    parse_config(doc, str(path))  # never write a config that would not load
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return note

