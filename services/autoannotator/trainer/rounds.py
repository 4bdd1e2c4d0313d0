"""One training round for one specialist, end to end, recorded in the pool's ledger.

Steps, in order (each failure is recorded as a failed round with the named error):

1. fetch the specialist's current version from the store (weights, ONNX, tokenizer, manifest);
   with none yet (cold start), build the first from the base encoder instead (:mod:`.coldstart`);
2. fine-tune its weights on the round's new samples plus the replay sample;
3. export the candidate to ONNX with the exporter (which checks logits against torch);
4. score candidate and current on the held-out samples through ONNX (the gate);
5. when the gate passes: publish a new immutable version (parent, metrics), make it current,
   announce it on ``model-releases``; otherwise record the rejection and release nothing.

Everything is built in a scratch directory under the trainer's work dir; the store only sees a
finished artifact through its atomic ``publish``, so a crash mid-round leaves no partial version.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoannotator.config import PipelineConfig
from autoannotator.exceptions import AutoAnnotatorError
from autoannotator.trainer import metrics
from autoannotator.trainer.exceptions import PromotionError, RoundCancelled, TrainerError
from autoannotator.trainer.finetune import FineTuneSettings, fine_tune
from autoannotator.trainer.gate import Predictor, evaluate_gate, serving_predictor
from autoannotator.trainer.pool import FAILED, INTERRUPTED, PROMOTED, REJECTED, RoundRecord, SamplePool

log = logging.getLogger(__name__)

# Announces a published manifest on model-releases (modelstore.release); raises on failure.
Announcer = Callable[[Any], None]


def settings_for(config: PipelineConfig, specialist: str) -> FineTuneSettings:
    """Fine-tuning hyper-parameters from the trainer section and the specialist's max_length."""
    trainer = config.trainer
    return FineTuneSettings(
        learning_rate=trainer.learning_rate,
        weight_decay=trainer.weight_decay,
        epochs=trainer.epochs,
        batch_size=trainer.batch_size,
        max_steps=trainer.max_steps,
        max_length=config.specialist(specialist).max_length,
        seed=trainer.seed,
    )


class RoundRunner:
    """Runs rounds for the configured specialists against one pool, store and announcer."""

    def __init__(
        self,
        config: PipelineConfig,
        pool: SamplePool,
        store: Any,
        announce: Announcer,
        *,
        work_dir: str | Path,
        predictors: dict[str, Predictor] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.store = store
        self.announce = announce
        self.work_dir = Path(work_dir)
        self.cancel = cancel or threading.Event()
        self._predictors = predictors or {}

    def predictor(self, specialist: str) -> Predictor:
        """How the gate scores this specialist's artifacts (the serving engine unless injected)."""
        if specialist not in self._predictors:
            self._predictors[specialist] = serving_predictor(self.config, specialist)
        return self._predictors[specialist]

    def owed(self) -> list[str]:
        """Specialists with ``beta`` samples since their last finished round."""
        beta = self.config.trainer.beta
        return [s.name for s in self.config.specialists if self.pool.owed(s.name, beta)]

    def run(self, specialist: str) -> RoundRecord:
        """Run one round for ``specialist`` and return its ledger row (any status)."""
        trainer = self.config.trainer
        started = time.perf_counter()
        parent_error: Exception | None = None
        try:
            parent = self.store.current(specialist)
        except Exception as exc:  # an unreachable store fails this round (recorded below), not the service
            parent, parent_error = None, exc
        data = self.pool.round_data(specialist, trainer.replay_fraction, trainer.seed)
        round_id = self.pool.begin_round(specialist, data, parent)
        scratch = self.work_dir / f"round-{round_id}"
        metrics.ROUND_RUNNING.set(1)
        log.info(
            "round %d for %s: %d new, %d replay, %d held out (parent %s)",
            round_id, specialist, len(data.new), len(data.replay), len(data.holdout), parent,
        )
        result: dict[str, Any] = {}
        try:
            if parent_error is not None:
                raise TrainerError(f"cannot read the current version of {specialist}: {parent_error}")
            status = self._run(specialist, parent, data, scratch, result)
            error = None
        except RoundCancelled as exc:
            status, error = INTERRUPTED, str(exc)
        except AutoAnnotatorError as exc:
            status, error = FAILED, f"{type(exc).__name__}: {exc}"
            log.error("round %d for %s failed: %s", round_id, specialist, error)
        except Exception as exc:  # a bug must not kill the service silently: recorded, logged with traceback
            status, error = FAILED, f"{type(exc).__name__}: {exc}"
            log.exception("round %d for %s failed unexpectedly", round_id, specialist)
        finally:
            metrics.ROUND_RUNNING.set(0)
            shutil.rmtree(scratch, ignore_errors=True)
        duration = time.perf_counter() - started
        self.pool.finish_round(
            round_id,
            status,
            candidate_accuracy=result.get("candidate_accuracy"),
            current_accuracy=result.get("current_accuracy"),
            version=result.get("version"),
            duration_s=duration,
            error=error,
            metrics=result,
        )
        if status != INTERRUPTED:
            metrics.ROUNDS.labels(specialist, status).inc()
            metrics.ROUND_SECONDS.labels(specialist).observe(duration)
        log.info("round %d for %s: %s in %.1fs %s", round_id, specialist, status, duration, error or "")
        return next(r for r in self.pool.rounds(specialist) if r.round_id == round_id)

    def _run(self, specialist: str, parent: str | None, data: Any, scratch: Path, result: dict[str, Any]) -> str:
        from autoannotator.artifacts.export import export_model

        if parent is None:  # cold start: the first version comes from the base encoder
            return self._first_version(specialist, data, scratch, result)
        if not data.new:
            raise TrainerError("no new training samples in this round (all new samples are held out)")
        if not data.holdout:
            raise TrainerError("no held-out samples yet: the gate cannot compare candidate and current")
        spec = self.config.specialist(specialist)
        task_labels = self.config.task.labels
        current_dir = Path(self.store.fetch(specialist, parent, scratch / "current"))
        manifest = self.store.manifest(specialist, parent)
        label_map = spec.label_map or dict(manifest.label_map)
        weights = current_dir / "weights"
        if not weights.is_dir():
            raise TrainerError(f"version {parent} of {specialist} carries no weights/ to fine-tune")
        train = data.new + data.replay
        report = fine_tune(
            weights,
            scratch / "candidate-hf",
            [s.text for s in train],
            [s.label for s in train],
            task_labels=task_labels,
            label_map=label_map,
            settings=settings_for(self.config, specialist),
            tokenizer_dir=current_dir / "tokenizer",
            cancel=self.cancel,
        )
        result.update(steps=report.steps, train_examples=report.examples, first_loss=report.first_loss,
                      last_loss=report.last_loss, finetune_s=report.seconds)
        if self.cancel.is_set():
            raise RoundCancelled("stopped after fine-tuning")
        candidate_dir = scratch / "candidate"
        export_model(
            scratch / "candidate-hf",
            candidate_dir,
            task_labels=list(task_labels),
            label_map=dict(manifest.label_map) or None,
            max_length=spec.max_length,
        )
        gate = evaluate_gate(
            candidate_dir, current_dir, data.holdout, task_labels=task_labels, margin=self.config.trainer.margin,
            predict=self.predictor(specialist),
        )
        result.update(candidate_accuracy=gate.candidate_accuracy, current_accuracy=gate.current_accuracy,
                      heldout_samples=gate.samples, new_samples=len(data.new), replay_samples=len(data.replay))
        metrics.HELDOUT_ACCURACY.labels(specialist, "candidate").set(gate.candidate_accuracy)
        metrics.HELDOUT_ACCURACY.labels(specialist, "current").set(gate.current_accuracy)
        if not gate.promote:
            log.info("%s: candidate %.4f < current %.4f - margin %.4f: rejected", specialist,
                     gate.candidate_accuracy, gate.current_accuracy, gate.margin)
            return REJECTED
        if self.cancel.is_set():
            raise RoundCancelled("stopped before publishing")
        published = self._promote(specialist, candidate_dir, parent, result)
        result["version"] = published.version
        metrics.set_promoted(specialist, published.version)
        return PROMOTED

    def _first_version(self, specialist: str, data: Any, scratch: Path, result: dict[str, Any]) -> str:
        from autoannotator.trainer.coldstart import build_first_version

        first = build_first_version(self.config, specialist, data, scratch, self.predictor(specialist), self.cancel)
        result.update(steps=first.steps, last_loss=first.last_loss, candidate_accuracy=first.candidate_accuracy,
                      majority_baseline_accuracy=first.baseline_accuracy, heldout_samples=len(data.holdout),
                      new_samples=len(data.new), replay_samples=len(data.replay))
        metrics.HELDOUT_ACCURACY.labels(specialist, "candidate").set(first.candidate_accuracy)
        if not first.promote:
            log.info("%s: first version %.4f < majority baseline %.4f - margin %.4f: rejected; still cold",
                     specialist, first.candidate_accuracy, first.baseline_accuracy, first.margin)
            return REJECTED
        if self.cancel.is_set():
            raise RoundCancelled("stopped before publishing")
        published = self._promote(specialist, first.artifact, None, result)
        result["version"] = published.version
        metrics.set_promoted(specialist, published.version)
        log.info("%s: cold start over: first version %s published (held-out accuracy %.4f)", specialist,
                 published.version, first.candidate_accuracy)
        return PROMOTED

    def _promote(self, specialist: str, candidate_dir: Path, parent: str | None, result: dict[str, Any]) -> Any:
        manifest_metrics = {k: float(v) for k, v in result.items() if isinstance(v, int | float)}
        try:
            published = self.store.publish(specialist, candidate_dir, parent_version=parent, metrics=manifest_metrics)
            self.store.set_current(specialist, published.version)
        except AutoAnnotatorError as exc:
            raise PromotionError(f"publishing the candidate of {specialist} failed: {exc}") from exc
        try:
            self.announce(published)
        except AutoAnnotatorError as exc:
            raise PromotionError(
                f"version {published.version} of {specialist} is published and current but its release "
                f"was not announced: {exc}"
            ) from exc
        return published
