"""What the voter learns from the audit stream: per-version calibration and the error-bounded threshold.

- :class:`Calibrations` — one temperature per ``(specialist, model version)``, from the config
  (``autoannotator calibrate``) and from releases (the trainer fits each promoted version). A
  version without one is scored uncalibrated (T = 1); a temperature never crosses versions.
- :class:`AuditWindow` — per *version set* (which version of each specialist voted), a sliding
  window of audit outcomes: the voted probabilities and the reviewer's label. From it,
  :func:`~autoannotator.errorbound.certify_threshold` gives the threshold that set may accept at.
  A set it has no outcomes for starts empty — every record of that set goes to review, flagged as
  audit, until enough outcomes arrive — unless the releases of its versions carry held-out
  predictions on common audit samples, which seed the window at once.

Everything here is derived from the ``reviewed`` and ``model-releases`` topics, so a restarted
voter that re-reads them rebuilds the same windows and resumes with the same thresholds.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from autoannotator.errorbound import ACCEPT_NOTHING, Certified, certify_threshold
from autoannotator.voter import metrics
from autoannotator.voter.routing import required_votes, soft
from autoannotator.wire import ModelRelease, Prediction, PredictionStatus, ReviewedSample, check_probs

log = logging.getLogger(__name__)

#: Which version of each specialist voted: ``(("s1", "v2"), ("s2", "v1"), ...)``, sorted by name.
VersionSet = tuple[tuple[str, str], ...]

_OK = PredictionStatus.PREDICTION_STATUS_OK


def version_set(predictions: Iterable[Prediction]) -> VersionSet:
    """The version set of the votes that counted."""
    return tuple(sorted((p.specialist, p.model_version) for p in predictions))


def describe(key: VersionSet) -> str:
    """A version set as ``s1@v2,s2@v1`` (logs and metric labels)."""
    return ",".join(f"{name}@{version}" for name, version in key) or "-"


class Calibrations:
    """Temperatures per ``(specialist, version)``; the config's win over the releases'."""

    def __init__(self, configured: dict[str, dict[str, float]] | None = None) -> None:
        self._configured = {(name, version): t for name, versions in (configured or {}).items()
                            for version, t in versions.items()}
        self._released: dict[tuple[str, str], float] = {}

    def temperature(self, specialist: str, version: str) -> float:
        """The temperature fitted for this version (1.0 when it has none)."""
        key = (specialist, version)
        return self._configured.get(key) or self._released.get(key, 1.0)

    def learn(self, specialist: str, version: str, temperature: float) -> bool:
        """Take a release's temperature; True when it changed what this version is scored with."""
        if temperature <= 0 or self._released.get((specialist, version)) == temperature:
            return False
        self._released[(specialist, version)] = temperature
        return (specialist, version) not in self._configured


@dataclass(frozen=True, slots=True)
class Scored:
    """One record's votes under the current calibration: the consensus and its score."""

    key: VersionSet
    label_index: int
    score: float  # the calibrated top mean probability; -1 for a tie (never accepted)


def score_votes(labels: Sequence[str], votes: Sequence[Prediction], vectors: Sequence[Sequence[float]],
                calibrations: Calibrations) -> Scored:
    """Soft consensus of checked vote vectors, each scaled with its own version's temperature."""
    temps = [calibrations.temperature(p.specialist, p.model_version) for p in votes]
    verdict = soft(vectors, temps, 0.0)
    return Scored(version_set(votes), verdict.label_index, -1.0 if verdict.tie else verdict.confidence)


@dataclass(slots=True)
class _Outcome:
    votes: list[Prediction]
    vectors: list[list[float]]
    truth: int  # the reviewer's label index


class AuditWindow:
    """Audit outcomes and certified thresholds per version set (thread-safe: fed by a follower thread)."""

    def __init__(
        self,
        labels: Sequence[str],
        specialists: Sequence[str],
        calibrations: Calibrations,
        *,
        target_error: float,
        confidence: float = 0.95,
        min_samples: int = 100,
        size: int = 2000,
        quorum: int = 1,
        on_restart: Callable[[VersionSet, int], None] | None = None,
    ) -> None:
        self.labels = list(labels)
        self.specialists = frozenset(specialists)
        self.calibrations = calibrations
        self.target_error = target_error
        self.confidence = confidence
        self.min_samples = min_samples
        self.size = size
        self.quorum = quorum
        self._on_restart = on_restart
        self._lock = threading.Lock()
        self._outcomes: dict[VersionSet, OrderedDict[str, _Outcome]] = {}
        self._certified: dict[VersionSet, Certified] = {}
        self._dirty: set[VersionSet] = set()
        # (specialist, version) -> record id -> (reviewer label, probabilities): releases' held-out sets.
        self._holdouts: dict[tuple[str, str], dict[str, tuple[str, list[float]]]] = {}

    # -- feeding -----------------------------------------------------------------------------------
    def add_reviewed(self, sample: ReviewedSample) -> VersionSet | None:
        """Add an audit sample's outcome (others are ignored); returns its version set when added."""
        if not sample.audit or sample.label not in self.labels:
            return None
        votes: list[Prediction] = []
        vectors: list[list[float]] = []
        for prediction in sample.predictions:
            if prediction.status != _OK or prediction.specialist not in self.specialists:
                continue
            probs, _ = check_probs(prediction, self.labels)
            if probs is not None:
                votes.append(prediction)
                vectors.append(probs)
        if len(votes) < required_votes(self.quorum, len(self.specialists), sample.predictions, "error-bounded"):
            return None
        key = version_set(votes)
        with self._lock:
            window = self._outcomes.setdefault(key, OrderedDict())
            # Keyed by id: a replayed or revised review replaces the earlier outcome, never doubles it.
            window.pop(sample.record_id, None)
            window[sample.record_id] = _Outcome(votes, vectors, self.labels.index(sample.label))
            while len(window) > self.size:
                window.popitem(last=False)
            self._dirty.add(key)
        return key

    def add_release(self, release: ModelRelease) -> None:
        """Take a release's temperature and held-out predictions."""
        if release.temperature > 0 and self.calibrations.learn(release.specialist, release.version,
                                                               release.temperature):
            with self._lock:
                self._dirty.update(k for k in self._outcomes if (release.specialist, release.version) in k)
        if release.holdout:
            held = {h.record_id: (h.label, list(h.probs)) for h in release.holdout
                    if h.label in self.labels and len(h.probs) == len(self.labels)}
            with self._lock:
                self._holdouts[(release.specialist, release.version)] = held

    # -- reading -----------------------------------------------------------------------------------
    def certified(self, key: VersionSet) -> Certified:
        """The certified threshold of a version set (computed on first sight, seeded from releases)."""
        found = self._certified.get(key)
        if found is not None:
            return found
        with self._lock:
            if key not in self._outcomes:
                seeded = self._seed(key)
                log.info("error-bounded window for %s: %s", describe(key),
                         f"seeded with {seeded} held-out audit samples from its releases" if seeded else
                         "no audit outcomes yet; every record of it goes to review until "
                         f"{self.min_samples} audit samples certify a threshold")
                if self._on_restart is not None:
                    self._on_restart(key, seeded)
            return self._compute(key)

    def refresh(self) -> list[VersionSet]:
        """Recompute every version set whose window changed; returns them."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            for key in dirty:
                self._compute(key)
        return sorted(dirty)

    def window_size(self, key: VersionSet) -> int:
        """Audit outcomes held for a version set."""
        return len(self._outcomes.get(key, ()))

    def outcomes(self, key: VersionSet) -> tuple[list[float], list[bool]]:
        """Scores and correctness of a version set's window under the current calibration."""
        window = self._outcomes.get(key, OrderedDict())
        scores: list[float] = []
        correct: list[bool] = []
        for outcome in list(window.values()):
            scored = score_votes(self.labels, outcome.votes, outcome.vectors, self.calibrations)
            scores.append(scored.score)
            correct.append(scored.label_index == outcome.truth)
        return scores, correct

    # -- internals (under the lock) ----------------------------------------------------------------
    def _compute(self, key: VersionSet) -> Certified:
        scores, correct = self.outcomes(key)
        result = certify_threshold(scores, correct, self.target_error, confidence=self.confidence,
                                   min_samples=self.min_samples) if scores else \
            Certified(ACCEPT_NOTHING, 0, 0, float("nan"), float("nan"))
        before = self._certified.get(key)
        if before is not None and before.threshold != result.threshold:
            log.info("error-bounded window for %s: threshold %.2f -> %.2f on %d audit samples (accepts %d, error "
                     "%.3f, bound %.3f)", describe(key), before.threshold, result.threshold, result.samples,
                     result.accepted, result.error, result.upper)
        self._certified[key] = result
        return result

    def _seed(self, key: VersionSet) -> int:
        window = self._outcomes.setdefault(key, OrderedDict())
        held = [self._holdouts.get(member) for member in key]
        if not key or any(h is None for h in held):
            return 0
        common = set.intersection(*(set(h) for h in held))
        for rid in sorted(common):
            truth = held[0][rid][0]
            if any(h[rid][0] != truth for h in held):
                continue  # the releases disagree on the reviewer's label: not a usable outcome
            votes = [Prediction(record_id=rid, specialist=name, model_version=version, status=_OK)
                     for name, version in key]
            window[rid] = _Outcome(votes, [h[rid][1] for h in held], self.labels.index(truth))
        while len(window) > self.size:
            window.popitem(last=False)
        return len(window)


def restart_metric(key: VersionSet, seeded: int) -> None:
    """Count a window (re)started for a version set, by whether releases seeded it."""
    metrics.WINDOW_RESTARTS.labels("seeded" if seeded else "empty").inc()
