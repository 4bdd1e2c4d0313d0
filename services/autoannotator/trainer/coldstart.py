"""Cold start: the first version of a specialist that has none, built on reviewed records.

With ``task.labels`` and a reviewer but no model in the store, each specialist answers every
record with a ``NO_MODEL`` prediction, the voter sends the record to review (reason
``cold_start``) and the reviewed records fill the trainer's pool: nothing is lost or guessed.
Once ``beta`` of them are in, the round of a specialist without a current version builds its
first version here instead of fine-tuning a parent — with the code ``autoannotator train`` runs
(:func:`~autoannotator.trainer.build.build_artifact`): a fresh head on the base encoder
(``trainer.cold_start.base``), fine-tuned on a bootstrap sample of the round's training samples
with the specialist's own seed (so the k specialists differ, as ``train``'s do), exported and
parity-checked. The gate has no current version to compare with, so the candidate must reach at
least the accuracy of always answering the most frequent held-out label (minus ``margin``).
The round then publishes, announces, and the specialists load the version like any release.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from autoannotator.config import PipelineConfig
from autoannotator.trainer.build import BuildSettings, bootstrap_sample, build_artifact, resolve_base
from autoannotator.trainer.exceptions import TrainerError
from autoannotator.trainer.gate import Predictor, accuracy
from autoannotator.trainer.pool import RoundData


@dataclass(frozen=True, slots=True)
class FirstVersion:
    """The first version's artifact and its gate against the majority-label baseline."""

    artifact: Path
    candidate_accuracy: float
    baseline_accuracy: float
    margin: float
    steps: int
    last_loss: float

    @property
    def promote(self) -> bool:
        """Whether the candidate does at least as well as always answering the most frequent label."""
        return self.candidate_accuracy >= self.baseline_accuracy - self.margin


def majority_accuracy(labels: list[str]) -> float:
    """Accuracy of always answering the most frequent of ``labels``."""
    if not labels:
        raise TrainerError("no held-out samples yet: the first version cannot be evaluated")
    return Counter(labels).most_common(1)[0][1] / len(labels)


def build_first_version(
    config: PipelineConfig,
    specialist: str,
    data: RoundData,
    scratch: Path,
    predict: Predictor,
    cancel: threading.Event | None = None,
) -> FirstVersion:
    """Build, export and evaluate the first version of ``specialist`` from the round's samples."""
    train = data.new + data.replay
    if not train:
        raise TrainerError("no training samples in this round (all reviewed samples are held out)")
    baseline = majority_accuracy([s.label for s in data.holdout])
    cold, trainer = config.trainer.cold_start, config.trainer
    index = [s.name for s in config.specialists].index(specialist)
    seed = trainer.seed + index
    sample = bootstrap_sample(train, seed + 1000 * (index + 1))
    base = resolve_base(cold.base, "trainer.cold_start.base")
    settings = BuildSettings(steps=cold.steps, batch_size=trainer.batch_size, learning_rate=cold.learning_rate,
                             max_length=config.specialist(specialist).max_length)
    built = build_artifact(
        specialist, base, [s.text for s in sample], [s.label for s in sample], config.task.labels, settings,
        scratch, seed=seed, cancel=cancel,
        source=f"cold start: {base.name} fine-tuned on a bootstrap sample of {len(train)} reviewed records "
               f"(seed {seed})",
    )
    candidate = accuracy(built.path, data.holdout, config.task.labels, predict)
    return FirstVersion(built.path, candidate, baseline, trainer.margin, built.fine_tune.steps,
                        built.fine_tune.last_loss)
