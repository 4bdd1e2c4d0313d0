"""The promotion gate: candidate and current version, scored on the same held-out reviewed samples.

Both are scored through their exported ONNX artifacts with the specialist's own inference
engine — the path that will serve the candidate — so the gate measures what would be served,
not the torch model it came from. A candidate is promoted only when its accuracy is at least
the current version's minus ``margin``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoannotator.config import PipelineConfig
from autoannotator.trainer.exceptions import GateError
from autoannotator.trainer.pool import PoolSample

# (artifact directory, task labels, texts) -> probabilities in task-label order, shape (n, labels).
Predictor = Callable[[Path, Sequence[str], Sequence[str]], np.ndarray]


@dataclass(frozen=True, slots=True)
class GateResult:
    """The gate's measurements and decision."""

    candidate_accuracy: float
    current_accuracy: float
    samples: int
    margin: float

    @property
    def promote(self) -> bool:
        """Whether the candidate is not worse than the current version by more than the margin."""
        return self.candidate_accuracy >= self.current_accuracy - self.margin


def serving_predictor(config: PipelineConfig, name: str) -> Predictor:
    """A predictor that runs specialist ``name``'s ONNX inference engine exactly as it serves.

    The engine comes from :func:`~autoannotator.artifacts.engine.serving_engine` (provider,
    threads, int8, max_length, label_map and batch limits from the config), so the gate scores
    what would be served.
    """
    spec = config.specialist(name)

    def predict(artifact_dir: Path, task_labels: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        from autoannotator.artifacts.engine import serving_engine

        if list(task_labels) != list(config.task.labels):
            raise GateError(f"task labels {list(task_labels)} differ from the config's {list(config.task.labels)}")
        engine = serving_engine(config, name, artifact_dir)
        return np.asarray(engine.predict(list(texts), max_batch_tokens=spec.max_batch_tokens,
                                         max_batch_size=spec.max_batch_size))

    return predict


def accuracy(
    artifact_dir: Path, samples: Sequence[PoolSample], task_labels: Sequence[str], predict: Predictor
) -> float:
    """Share of ``samples`` whose argmax task label equals the reviewed label."""
    if not samples:
        raise GateError("no held-out samples to evaluate on")
    try:
        probs = predict(artifact_dir, task_labels, [s.text for s in samples])
    except GateError:
        raise
    except Exception as exc:  # any load/inference failure makes the gate unable to decide: a failed round
        raise GateError(f"cannot evaluate {artifact_dir}: {type(exc).__name__}: {exc}") from exc
    if probs.shape != (len(samples), len(task_labels)):
        expected = (len(samples), len(task_labels))
        raise GateError(f"{artifact_dir}: predictions of shape {probs.shape}, expected {expected}")
    predicted = probs.argmax(axis=1)
    truth = np.array([list(task_labels).index(s.label) for s in samples])
    return float((predicted == truth).mean())


def evaluate_gate(
    candidate_dir: Path,
    current_dir: Path,
    holdout: Sequence[PoolSample],
    *,
    task_labels: Sequence[str],
    margin: float,
    predict: Predictor,
) -> GateResult:
    """Score candidate and current version on the held-out samples; :attr:`GateResult.promote` decides."""
    candidate = accuracy(candidate_dir, holdout, task_labels, predict)
    current = accuracy(current_dir, holdout, task_labels, predict)
    return GateResult(candidate, current, len(holdout), margin)
