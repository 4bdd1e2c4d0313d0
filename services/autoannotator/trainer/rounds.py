"""One training round for one specialist, end to end, recorded in the pool's ledger.

Steps, in order (each failure is recorded as a failed round with the named error):

1. fetch the specialist's current version from the store (weights, ONNX, tokenizer, manifest);
   with none yet (cold start), build the first from the base encoder instead (:mod:`.coldstart`);
2. fine-tune its weights on the round's new samples (reviewed hard and audit samples) plus the
   replay sample, on CUDA with mixed precision when present, else on CPU at lower priority;
3. export the candidate to ONNX with the exporter (which checks logits against torch), in the
   parent's precision (an int8 or fp16 parent yields an int8 or fp16 child);
4. score candidate and current on the held-out samples through ONNX (the gate: accuracy, and the
   LLM share each would cause, estimated on the held-out audit samples);
5. when the gate passes: fit the candidate's temperature on the held-out audit samples, publish a
   new immutable version (parent, metrics, calibration) and make it current; otherwise record the
   rejection, keep the candidate for inspection and release nothing.

Promotions are announced on ``model-releases`` per *batch* of rounds, not per round (except a
cold start's first versions, announced at once)
(:meth:`RoundRunner.announce_promoted`): the trainer runs the rounds of every owed specialist, then
announces the new versions together, each with its temperature and with every specialist's
current version's probabilities on the same held-out audit samples. The voter certifies routing
per set of serving versions, and a new set starts from what those releases seed; so one batch
changes the set once instead of once per specialist, and each later round of the batch is gated
with the earlier rounds' promotions as its peers — the set the voter will see.

Everything is built in a scratch directory under the trainer's work dir; the store only sees a
finished artifact through its atomic ``publish``, so a crash mid-round leaves no partial version.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoannotator.config import PipelineConfig
from autoannotator.exceptions import AutoAnnotatorError
from autoannotator.trainer import metrics
from autoannotator.trainer.exceptions import PromotionError, RoundCancelled, TrainerError
from autoannotator.trainer.finetune import FineTuneSettings, fine_tune
from autoannotator.trainer.gate import GateResult, Peer, Predictor, evaluate_gate, serving_predictor
from autoannotator.trainer.pool import FAILED, INTERRUPTED, PROMOTED, REJECTED, PoolSample, RoundRecord, SamplePool
from autoannotator.trainer.share import ShareEstimate, configured_temperature, estimate_share, routing_of
from autoannotator.voter.audit import describe
from autoannotator.wire import HeldOutPrediction

log = logging.getLogger(__name__)

# Announces a published manifest on model-releases (artifacts.release), with the version's
# probabilities on the held-out audit samples; raises on failure.
Announcer = Callable[[Any, Sequence[HeldOutPrediction]], None]
# Rejected candidates kept for inspection per specialist (oldest removed first).
KEEP_REJECTED = 3


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
        device=trainer.device,
        mixed_precision=trainer.mixed_precision,
        threads=trainer.threads,
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
        # Promoted in this batch and not yet announced: specialist -> published manifest; and the
        # held-out audit samples of the latest promoting round (what every release carries).
        self._unannounced: dict[str, Any] = {}
        self._announce_on: list[PoolSample] = []
        # The versions the voter sees while a batch's promotions wait to be announced.
        self._serving: dict[str, str | None] = {}
        # Probabilities already computed this batch, by (specialist, version): the held-out audit
        # samples' ids they are on, and the rows (the gate's candidate and peers; reused when the
        # batch is announced on the same samples instead of running the artifact again).
        self._audit_probs: dict[tuple[str, str], tuple[tuple[str, ...], np.ndarray]] = {}

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
                      last_loss=report.last_loss, finetune_s=report.seconds, device=report.device,
                      audit_train_samples=data.new_audit)
        metrics.set_device(report.device)
        if self.cancel.is_set():
            raise RoundCancelled("stopped after fine-tuning")
        candidate_dir = scratch / "candidate"
        export_model(
            scratch / "candidate-hf",
            candidate_dir,
            task_labels=list(task_labels),
            label_map=dict(manifest.label_map) or None,
            max_length=spec.max_length,
            # The child keeps the parent's precision (an fp32 parent served with int8=true is
            # quantized at load by the specialist, as its parent was).
            int8=manifest.precision == "int8",
            fp16=manifest.precision == "fp16",
        )
        result["precision"] = manifest.precision
        gate = self._gate(specialist, parent, manifest, candidate_dir, current_dir, data.holdout, scratch)
        result.update(candidate_accuracy=gate.candidate_accuracy, current_accuracy=gate.current_accuracy,
                      heldout_samples=gate.samples, new_samples=len(data.new), replay_samples=len(data.replay),
                      heldout_audit_samples=gate.audit_samples, candidate_temperature=gate.candidate_temperature,
                      current_temperature=gate.current_temperature)
        if not math.isnan(gate.candidate_share):
            result.update(candidate_llm_share=gate.candidate_share, current_llm_share=gate.current_share)
            if not math.isnan(gate.serving_share):
                result.update(serving_llm_share=gate.serving_share, serving_audit_samples=gate.serving_samples,
                              serving_versions=describe(tuple(sorted(self.serving_versions().items()))))
                metrics.HELDOUT_LLM_SHARE.labels(specialist, "serving").set(gate.serving_share)
            metrics.HELDOUT_LLM_SHARE.labels(specialist, "candidate").set(gate.candidate_share)
            metrics.HELDOUT_LLM_SHARE.labels(specialist, "current").set(gate.current_share)
        metrics.HELDOUT_ACCURACY.labels(specialist, "candidate").set(gate.candidate_accuracy)
        metrics.HELDOUT_ACCURACY.labels(specialist, "current").set(gate.current_accuracy)
        if not gate.promote:
            result["rejected_because"] = gate.reason()
            result["kept_at"] = str(self._keep_rejected(specialist, candidate_dir))
            log.info("%s: candidate rejected: %s (kept at %s)", specialist, gate.reason(), result["kept_at"])
            return REJECTED
        if self.cancel.is_set():
            raise RoundCancelled("stopped before publishing")
        self._calibrate(candidate_dir, gate)
        published = self._promote(specialist, candidate_dir, parent, result, data.holdout_audit,
                                  audit_probs=gate.candidate_audit_probs)
        result["version"] = published.version
        metrics.set_promoted(specialist, published.version)
        return PROMOTED

    # -- the gate's inputs -----------------------------------------------------------------------
    def temperature_of(self, specialist: str, version: str, manifest: Any | None = None) -> float:
        """The temperature the voter applies to one version, in the voter's order.

        The config's ``voter.temperatures`` for this version wins, else the one fitted at promotion
        (its manifest, carried in its release), else 1.0 (voter.audit.Calibrations).
        """
        configured = configured_temperature(self.config, specialist, version)
        if configured:
            return configured
        manifest = manifest if manifest is not None else self.store.manifest(specialist, version)
        return float(manifest.calibration.get("temperature") or 1.0)

    def _gate(self, specialist: str, parent: str, manifest: Any, candidate_dir: Path, current_dir: Path,
              holdout: list[PoolSample], scratch: Path) -> GateResult:
        """The gate's decision (the other specialists at their current versions are the candidate's peers)."""
        audit = [s for s in holdout if s.audit]
        if not self._unannounced:  # a new batch: nothing computed before can be announced
            self._audit_probs.clear()
        found = [self._peer(spec.name, audit, scratch) for spec in self.config.specialists if spec.name != specialist]
        peers = [p for p in found if p is not None]
        routing = routing_of(self.config)
        gate = evaluate_gate(
            candidate_dir, current_dir, holdout, task_labels=self.config.task.labels,
            margin=self.config.trainer.margin, predict=self.predictor(specialist), routing=routing,
            peers=peers, current_temperature=self.temperature_of(specialist, parent, manifest),
        )
        if routing.policy == "error-bounded" and not math.isnan(gate.candidate_share):
            serving = self.serving_share(audit, scratch)
            if serving is not None:
                gate = dataclasses.replace(gate, serving_share=serving.share, serving_samples=serving.samples)
        return gate

    def serving_versions(self) -> dict[str, str | None]:
        """The version of each specialist the voter sees now: the last announced (this batch's promotions wait)."""
        if self._unannounced:
            return dict(self._serving)
        return {spec.name: self.store.current(spec.name) for spec in self.config.specialists}

    def serving_share(self, held_out: list[PoolSample], scratch: Path | None = None) -> ShareEstimate | None:
        """The LLM share the serving version set causes now, replayed on the window the voter holds for it.

        That window is what the set's releases seeded it with — the serving versions' predictions
        on the held-out audit samples ``held_out`` (:meth:`_peer`: what the gate already computed for
        its peers, else the stored or computed predictions) — plus the live audit samples in the pool that every
        serving version voted on (the predictions stored with each reviewed sample), the newest
        ``voter.audit_window`` of them all. None when a specialist has no version yet.
        """
        serving = {name: version for name, version in self.serving_versions().items() if version is not None}
        if len(serving) < len(self.config.specialists):  # a specialist has no version yet
            return None
        labels = list(self.config.task.labels)
        window = self.config.voter.audit_window
        live: list[tuple[list[list[float]], int]] = []
        held_ids = {s.record_id for s in held_out}
        audit = [s for s in self.pool.audit_samples(limit=4 * window) if s.record_id not in held_ids]
        stored = self.pool.reviewed([s.record_id for s in audit])
        for sample in reversed(audit):  # newest first, as the voter's sliding window keeps them
            seen = stored.get(sample.record_id)
            by_name = {p.specialist: p for p in (seen.predictions if seen else ())}
            votes = [p for name, version in serving.items()
                     if (p := by_name.get(name)) is not None and p.model_version == version
                     and list(p.labels or labels) == labels and len(p.probs) == len(labels)]
            if len(votes) < len(serving):  # some serving version did not vote on it
                continue
            live.append(([list(p.probs) for p in votes], labels.index(sample.label)))
            if len(live) >= window:
                break
        seeded: list[tuple[list[list[float]], int]] = []
        if held_out and len(live) < window:
            columns = []
            for name, version in serving.items():
                peer = self._peer(name, held_out, scratch or self.work_dir / "serving", version=version)
                if peer is None:
                    return None
                columns.append(np.asarray(peer.probs))
            seeded = [([column[i].tolist() for column in columns], labels.index(sample.label))
                      for i, sample in enumerate(held_out)][-(window - len(live)):]
        rows = seeded + live[::-1]
        if not rows:
            return None
        per_specialist = [np.array([row[i] for row, _ in rows]) for i in range(len(serving))]
        temperatures = [self.temperature_of(name, version) for name, version in serving.items()]
        return estimate_share(per_specialist, temperatures, np.array([t for _, t in rows]), routing_of(self.config))

    def _peer(self, name: str, audit: list[PoolSample], scratch: Path, version: str | None = None) -> Peer | None:
        """A specialist's current (or given) version on the held-out audit samples (None: it has no version).

        Probabilities this batch already computed for that version on the same samples are reused;
        else the predictions the voter saw, where they came from that same version; the rest are
        computed with its artifact.
        """
        version = version or self.store.current(name)
        if version is None:
            return None
        ids = tuple(s.record_id for s in audit)
        cached = self._audit_probs.get((name, version))
        if cached is not None and cached[0] == ids:
            return Peer(cached[1], self.temperature_of(name, version), specialist=name, version=version)
        labels = self.config.task.labels
        probs = np.zeros((len(audit), len(labels)))
        missing: list[int] = []
        stored = self.pool.reviewed([s.record_id for s in audit])
        for i, sample in enumerate(audit):
            seen = stored.get(sample.record_id)
            match = [p for p in (seen.predictions if seen else ()) if p.specialist == name
                     and p.model_version == version and list(p.labels or labels) == list(labels) and len(p.probs)
                     == len(labels)]
            if match:
                probs[i] = match[0].probs
            else:
                missing.append(i)
        if missing:
            artifact = Path(self.store.fetch(name, version, scratch / f"peer-{name}-{version}", weights=False))
            from autoannotator.trainer.gate import probabilities

            probs[missing] = probabilities(artifact, [audit[i] for i in missing], labels, self.predictor(name))
        self._audit_probs[(name, version)] = (ids, probs)
        return Peer(probs, self.temperature_of(name, version), specialist=name, version=version)

    def _calibrate(self, candidate_dir: Path, gate: GateResult) -> None:
        """Write the candidate's fitted temperature into its manifest before it is published."""
        from autoannotator.artifacts.manifest import Manifest

        manifest = Manifest.read(candidate_dir)
        manifest.calibration = {"temperature": float(gate.candidate_temperature), "samples": float(gate.audit_samples)}
        manifest.validate(str(candidate_dir))
        manifest.write(candidate_dir)

    @staticmethod
    def _holdout_predictions(audit: list[PoolSample], probs: np.ndarray | None) -> list[HeldOutPrediction]:
        """One version's uncalibrated probabilities (task-label order) on the held-out audit samples,
        with the reviewer's label: what the voter's audit window seeds a new version set from."""
        if probs is None:
            return []
        return [HeldOutPrediction(record_id=s.record_id, label=s.label, probs=[float(x) for x in row])
                for s, row in zip(audit, probs, strict=True)]

    def _keep_rejected(self, specialist: str, candidate_dir: Path) -> Path:
        """Move a rejected candidate out of the scratch folder (kept for inspection, never served)."""
        keep = self.work_dir.parent / "trainer-rejected" / specialist
        keep.mkdir(parents=True, exist_ok=True)
        target = keep / f"{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**6:06d}"
        shutil.move(str(candidate_dir), target)
        for old in sorted(keep.iterdir())[:-KEEP_REJECTED]:
            shutil.rmtree(old, ignore_errors=True)
        return target

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
        published = self._promote(specialist, first.artifact, None, result, data.holdout_audit)
        result["version"] = published.version
        metrics.set_promoted(specialist, published.version)
        log.info("%s: cold start over: first version %s published (held-out accuracy %.4f)", specialist,
                 published.version, first.candidate_accuracy)
        # A first version is announced at once, not with its batch: any version votes where none did,
        # and the other first versions of a cold start take minutes each to build.
        try:
            self.announce_promoted()
        except PromotionError as exc:  # stays pending; the batch's end (or the next tick) tries again
            log.error("%s", exc)
        return PROMOTED

    def _promote(self, specialist: str, candidate_dir: Path, parent: str | None, result: dict[str, Any],
                 holdout_audit: list[PoolSample], audit_probs: np.ndarray | None = None) -> Any:
        """Publish the candidate and make it current; it is announced with its batch (:meth:`announce_promoted`).

        ``audit_probs``: the candidate's probabilities on ``holdout_audit`` as the gate computed
        them, kept for the announcement (the published artifact is the same files).
        """
        manifest_metrics = {k: float(v) for k, v in result.items() if isinstance(v, int | float)}
        if not self._unannounced:  # the first promotion of a batch: what the voter sees until it is announced
            self._serving = self.serving_versions()
        try:
            published = self.store.publish(specialist, candidate_dir, parent_version=parent, metrics=manifest_metrics)
            self.store.set_current(specialist, published.version)
        except AutoAnnotatorError as exc:
            raise PromotionError(f"publishing the candidate of {specialist} failed: {exc}") from exc
        self._unannounced[specialist] = published
        self._announce_on = list(holdout_audit)
        if audit_probs is not None and len(audit_probs) == len(holdout_audit):
            self._audit_probs[(specialist, published.version)] = (
                tuple(s.record_id for s in holdout_audit), np.asarray(audit_probs))
        return published

    @property
    def unannounced(self) -> list[str]:
        """Specialists whose promoted version waits for its batch's announcement."""
        return sorted(self._unannounced)

    def announce_promoted(self) -> list[str]:
        """Announce the versions promoted since the last call, together; returns their specialists.

        Every specialist's current version is announced with its own probabilities on the same
        held-out audit samples (those of the latest promoting round), because the voter seeds a
        new version set's window only from samples that EVERY member's release carries
        (voter.audit.AuditWindow._seed). The unchanged specialists go first (their re-announcement
        only refreshes what the voter seeds from; a specialist ignores a release of the version it
        serves), the promoted ones last. A failure raises :class:`PromotionError` and keeps the
        promotions pending, so the next call announces them again.
        """
        if not self._unannounced:
            return []
        audit = self._announce_on
        scratch = self.work_dir / "announce"
        promoted = dict(self._unannounced)
        order = [s.name for s in self.config.specialists if s.name not in promoted] + list(promoted)
        try:
            for name in order:
                manifest = promoted.get(name)
                version = manifest.version if manifest is not None else self.store.current(name)
                if version is None:
                    continue
                peer = self._peer(name, audit, scratch, version=version) if audit else None
                holdout = self._holdout_predictions(audit, peer.probs) if peer is not None else []
                self.announce(manifest if manifest is not None else self.store.manifest(name, version), holdout)
        except AutoAnnotatorError as exc:
            raise PromotionError(
                f"versions {', '.join(f'{n} {m.version}' for n, m in promoted.items())} are published and current "
                f"but their releases were not all announced (retried with the next batch): {exc}"
            ) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for name in promoted:
            self._unannounced.pop(name, None)
        self._audit_probs.clear()  # a batch's; the next batch gates on new held-out samples
        log.info("announced %s with %d held-out audit predictions each",
                 ", ".join(f"{n} {m.version}" for n, m in promoted.items()), len(audit))
        return list(promoted)
