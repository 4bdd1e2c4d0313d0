"""The :class:`Trainer` processor: ``reviewed`` -> pool; every ``beta`` samples a batch of rounds in the background.

``handle`` stores each batch in the pool in one durable transaction before returning, and the
shared loop commits offsets only after ``handle`` returns, so what is committed is stored. Rounds
run in one background thread, so the pipeline keeps annotating with the current models while a
candidate trains (the paper paused annotation). One batch runs a round for every owed specialist
and then announces its promotions together (:meth:`RoundRunner.announce_promoted`), so the voter
sees one new set of versions per batch. Which rounds are owed is read from the pool on every
check, never kept in memory: after a crash the interrupted round is simply owed again. A crash
between a promotion and its batch's announcement leaves that version current in the store but
unannounced until the next promotion of any specialist announces every current version.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoannotator.config import PipelineConfig
from autoannotator.exceptions import BadInput
from autoannotator.stream.loop import Outbox, Processor
from autoannotator.trainer import metrics
from autoannotator.trainer.exceptions import PromotionError, TrainerError
from autoannotator.trainer.gate import Predictor
from autoannotator.trainer.pool import RoundRecord, SamplePool
from autoannotator.trainer.rounds import Announcer, RoundRunner
from autoannotator.wire import HeldOutPrediction, RawMessage, ReviewedSample, decode

log = logging.getLogger(__name__)

SERVICE = "trainer"
# How often the loop asks the pool whether a round is owed.
CHECK_INTERVAL_S = 1.0
# How long shutdown waits for a cancelled round to stop (it stops between optimiser steps).
STOP_WAIT_S = 60.0


def parse_reviewed(msg: RawMessage, task_labels: Sequence[str]) -> ReviewedSample:
    """Decode and check one ``reviewed`` message; :class:`BadInput` says why it cannot be trained on."""
    sample, _ = decode("reviewed", msg)  # the id rule: the key, else the body's id, else the coordinates
    if not sample.record.text.strip():
        raise BadInput("empty", "the reviewed record has no text")
    if sample.label not in task_labels:
        raise BadInput("unknown_label", f"label {sample.label!r} is not one of the task labels {list(task_labels)}")
    return sample


class Trainer(Processor):
    """Consumes ``reviewed`` into the pool and runs owed training rounds in a background thread."""

    topics = ("reviewed",)

    def __init__(
        self,
        config: PipelineConfig,
        store: Any,
        announce: Announcer,
        *,
        pool: SamplePool | None = None,
        predictors: dict[str, Predictor] | None = None,
        work_dir: str | Path | None = None,
    ) -> None:
        self.config = config
        self.pool = pool or SamplePool(config.trainer.pool_path, config.trainer.holdout_fraction,
                                         config.trainer.audit_holdout_fraction)
        interrupted = self.pool.interrupt_running()
        if interrupted:
            log.warning("%d round(s) were interrupted by the last stop; they are owed again", interrupted)
        self.work_dir = Path(work_dir or Path(config.data_dir) / "trainer-work")
        # Scratch of rounds that died with the process: never published, safe to drop.
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.cancel = threading.Event()
        self.runner = RoundRunner(
            config, self.pool, store, announce, work_dir=self.work_dir, predictors=predictors, cancel=self.cancel
        )
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None
        self._last_check = 0.0
        self._update_pool_gauge()

    # -- consuming -----------------------------------------------------------------------------
    def handle(self, batch: Sequence[RawMessage], out: Outbox) -> None:
        """Store the batch's valid samples (one transaction); keep invalid ones aside with the reason."""
        valid: list[ReviewedSample] = []
        for msg in batch:
            try:
                valid.append(parse_reviewed(msg, self.config.task.labels))
            except BadInput as exc:
                log.warning("reviewed %s cannot be trained on: %s", msg.record_id, exc)
                self.pool.add_invalid(msg.record_id, exc.reason, exc.detail, msg.value)
                metrics.SAMPLES_IN.labels("invalid").inc()
        added = self.pool.add(valid)
        metrics.SAMPLES_IN.labels("stored").inc(added)
        metrics.SAMPLES_IN.labels("duplicate").inc(len(valid) - added)
        self._update_pool_gauge()

    def _update_pool_gauge(self) -> None:
        for split, n in self.pool.counts().items():
            metrics.POOL_SIZE.labels(split).set(n)

    # -- rounds ----------------------------------------------------------------------------------
    def tick(self, out: Outbox) -> None:
        """Reap a finished worker; start one when a round is owed and none runs."""
        if self._worker_error is not None:
            error, self._worker_error = self._worker_error, None
            raise TrainerError(f"the training worker died: {error}") from error
        if self._worker is not None:
            if self._worker.is_alive():
                return
            self._worker.join()
            self._worker = None
        now = time.monotonic()
        if not self.config.trainer.enabled or now - self._last_check < CHECK_INTERVAL_S:
            return
        self._last_check = now
        if self.runner.unannounced:  # a batch whose announcement failed: try again before training more
            self._announce()
            if self.runner.unannounced:
                return
        owed = self.runner.owed()
        metrics.ROUNDS_OWED.set(len(owed))
        if owed:
            self._worker = threading.Thread(target=self._work, args=(owed,), name="trainer-round", daemon=True)
            self._worker.start()

    def _work(self, specialists: list[str]) -> None:
        """One batch: a round per owed specialist, then their promotions announced together."""
        lower_priority(self.config.trainer.nice)
        try:
            try:
                for name in specialists:
                    if self.cancel.is_set():
                        return
                    self.runner.run(name)
            finally:  # what was promoted is announced, even when a later round was stopped
                self._announce()
        except BaseException as exc:  # handed to the loop thread, which raises it (the service stops)
            log.exception("training worker failed")
            self._worker_error = exc

    def _announce(self) -> None:
        """Announce the batch's promotions; on failure they stay pending for the next batch or tick."""
        try:
            self.runner.announce_promoted()
        except PromotionError as exc:
            log.error("%s", exc)

    @property
    def round_running(self) -> bool:
        """Whether a background round is in progress."""
        return self._worker is not None and self._worker.is_alive()

    def run_once(self, specialists: Sequence[str] | None = None) -> list[RoundRecord]:
        """Run one round now for each (given) specialist with new samples, in the foreground."""
        names = list(specialists) if specialists else [s.name for s in self.config.specialists]
        results = []
        for name in names:
            self.config.specialist(name)  # unknown names fail here, naming the field
            if self.pool.pending(name) == 0:
                log.info("%s: no new samples since its last round; nothing to do", name)
                continue
            results.append(self.runner.run(name))
        self.runner.announce_promoted()
        return results

    def clean_store(self) -> None:
        """Remove version folders of publishes a crash interrupted (never visible, never served)."""
        for spec in self.config.specialists:
            removed = self.runner.store.clean_partial(spec.name)
            if removed:
                log.warning("%s: removed partial versions %s left by an interrupted publish", spec.name, removed)

    def close(self, out: Outbox) -> None:
        """Stop a running round between optimiser steps; it stays owed and is redone at the next start."""
        self.cancel.set()
        if self._worker is not None:
            self._worker.join(STOP_WAIT_S)
            if self._worker.is_alive():
                log.warning("the training round did not stop within %.0fs; it is abandoned", STOP_WAIT_S)


def lower_priority(niceness: int) -> None:
    """Lower the calling thread's CPU priority (Linux: niceness is per thread), so serving keeps the cores."""
    if niceness <= 0 or not hasattr(os, "nice"):
        return
    try:
        os.nice(niceness)
    except OSError as exc:  # not permitted: training still runs, only at normal priority
        log.warning("cannot lower the training thread's priority: %s", exc)


def release_announcer(config: PipelineConfig, store: Any, bootstrap: str) -> Announcer:
    """Announce a published manifest on ``model-releases`` and wait for the broker's acknowledgement.

    The release carries the version's temperature (from its manifest) and its probabilities on
    the held-out audit samples, so the voter can start the error-bounded window of the new
    version set at once.
    """
    from autoannotator.artifacts.release import announce, build_release

    def announce_manifest(manifest: Any, holdout: Sequence[HeldOutPrediction] = ()) -> None:
        release = build_release(manifest, store.artifact_uri(manifest.specialist, manifest.version))
        release.holdout.extend(holdout)
        announce(config, bootstrap, release)

    return announce_manifest


def build_trainer(config: PipelineConfig, bootstrap: str, **kwargs: Any) -> Trainer:
    """A :class:`Trainer` on the configured store, announcing on the given cluster."""
    from autoannotator.artifacts.store import store_for

    store = store_for(config)
    trainer = Trainer(config, store, release_announcer(config, store, bootstrap), **kwargs)
    trainer.clean_store()
    return trainer
