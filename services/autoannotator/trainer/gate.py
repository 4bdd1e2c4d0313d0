"""The promotion gate: candidate and current version, scored on the same held-out samples.

Both are scored through their exported ONNX artifacts with the specialist's own inference
engine — the path that will serve the candidate — so the gate measures what would be served,
not the torch model it came from. The held-out set is a hash-chosen share of the audit and
reviewed samples, never trained on. A candidate is promoted only when

(a) its held-out accuracy is at least the current version's minus ``margin``, and
(b) the LLM share it would cause at the configured routing is not higher than the current
    version's, estimated on the held-out AUDIT samples (the uniform sample of the stream; the
    other held-out samples are the hard tail and would bias it). The candidate replaces the
    current version of its specialist; the other specialists stay at their current versions;
    each version is scaled by its own temperature (the candidate's is fitted here, on the same
    held-out audit samples, and is what the voter will apply to it); and
(c) under error-bounded routing, that share is not higher than the share the SERVING set of
    versions causes now, estimated on the audit samples the voter collected for it (when there
    are at least ``min_audit_samples`` of them). A promotion starts a new version set whose window
    the voter seeds from the held-out audit samples only; a set that has certified a low
    threshold on a long live window must not be traded for one that, on its seed, routes more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoannotator.config import PipelineConfig
from autoannotator.trainer.exceptions import GateError
from autoannotator.trainer.pool import PoolSample
from autoannotator.trainer.share import Routing, estimate_share

# (artifact directory, task labels, texts) -> probabilities in task-label order, shape (n, labels).
Predictor = Callable[[Path, Sequence[str], Sequence[str]], np.ndarray]


@dataclass(frozen=True, slots=True)
class GateResult:
    """The gate's measurements and decision."""

    candidate_accuracy: float
    current_accuracy: float
    samples: int
    margin: float
    # The LLM share each would cause at the configured routing, estimated on the held-out audit
    # samples (nan: not estimated), and how many audit samples that rests on.
    candidate_share: float = math.nan
    current_share: float = math.nan
    audit_samples: int = 0
    # The candidate's temperature, fitted on the held-out audit samples (1.0 with none), and the
    # current version's as the voter applies it.
    candidate_temperature: float = 1.0
    current_temperature: float = 1.0
    # The candidate's probabilities on the held-out audit samples (task-label order, uncalibrated).
    candidate_audit_probs: np.ndarray | None = field(default=None, compare=False, repr=False)
    # The share the serving version set causes now, on its live audit samples (nan: not compared),
    # and how many samples that rests on.
    serving_share: float = math.nan
    serving_samples: int = 0

    @property
    def accuracy_ok(self) -> bool:
        """Whether the candidate is not worse than the current version by more than the margin."""
        return self.candidate_accuracy >= self.current_accuracy - self.margin

    @property
    def share_ok(self) -> bool:
        """Whether the candidate would not raise the LLM share (true when the share was not estimated)."""
        if math.isnan(self.candidate_share) or math.isnan(self.current_share):
            return True
        return self.candidate_share <= self.current_share + _SHARE_TOLERANCE and self.serving_ok

    @property
    def serving_ok(self) -> bool:
        """Whether the candidate's set would not route more than the serving set does now (true: not compared)."""
        if math.isnan(self.serving_share) or math.isnan(self.candidate_share):
            return True
        return self.candidate_share <= self.serving_share + _SHARE_TOLERANCE

    @property
    def promote(self) -> bool:
        """Both tests pass: held-out accuracy holds and the estimated LLM share does not rise."""
        return self.accuracy_ok and self.share_ok

    def reason(self) -> str:
        """Why a candidate is rejected (empty when it is promoted)."""
        reasons = []
        if not self.accuracy_ok:
            reasons.append(f"held-out accuracy {self.candidate_accuracy:.4f} < current {self.current_accuracy:.4f}"
                           f" - margin {self.margin:.4f}")
        if not math.isnan(self.candidate_share) and self.candidate_share > self.current_share + _SHARE_TOLERANCE:
            reasons.append(f"estimated LLM share {self.candidate_share:.4f} > current {self.current_share:.4f}"
                           f" (on {self.audit_samples} held-out audit samples)")
        if not self.serving_ok:
            reasons.append(f"estimated LLM share {self.candidate_share:.4f} on {self.audit_samples} held-out audit "
                           f"samples > {self.serving_share:.4f} that the serving versions cause now (on "
                           f"{self.serving_samples} live audit samples)")
        return "; ".join(reasons)


# Shares are means over the same audit samples; this only absorbs float rounding.
_SHARE_TOLERANCE = 1e-9
# Fewer held-out audit samples than this leave the temperature at 1.0 (nothing to fit on).
MIN_CALIBRATION_SAMPLES = 10


@dataclass(frozen=True, slots=True)
class Peer:
    """Another specialist at its current version: its probabilities on the held-out audit samples."""

    probs: np.ndarray
    temperature: float
    # Which specialist and version these are (empty in tests that only estimate a share).
    specialist: str = ""
    version: str = ""


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


def probabilities(
    artifact_dir: Path, samples: Sequence[PoolSample], task_labels: Sequence[str], predict: Predictor
) -> np.ndarray:
    """The artifact's probabilities (task-label order) on ``samples``; :class:`GateError` on any failure."""
    if not samples:
        raise GateError("no held-out samples to evaluate on")
    try:
        probs = np.asarray(predict(artifact_dir, task_labels, [s.text for s in samples]), dtype=np.float64)
    except GateError:
        raise
    except Exception as exc:  # any load/inference failure makes the gate unable to decide: a failed round
        raise GateError(f"cannot evaluate {artifact_dir}: {type(exc).__name__}: {exc}") from exc
    if probs.shape != (len(samples), len(task_labels)):
        expected = (len(samples), len(task_labels))
        raise GateError(f"{artifact_dir}: predictions of shape {probs.shape}, expected {expected}")
    return probs


def targets_of(samples: Sequence[PoolSample], task_labels: Sequence[str]) -> np.ndarray:
    """The reviewed labels of ``samples`` as task-label indices."""
    return np.array([list(task_labels).index(s.label) for s in samples], dtype=np.int64)


def accuracy(
    artifact_dir: Path, samples: Sequence[PoolSample], task_labels: Sequence[str], predict: Predictor
) -> float:
    """Share of ``samples`` whose argmax task label equals the reviewed label."""
    probs = probabilities(artifact_dir, samples, task_labels, predict)
    return float((probs.argmax(axis=1) == targets_of(samples, task_labels)).mean())


def fit_version_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """A version's temperature on held-out audit samples (1.0 when there are too few to fit on)."""
    from autoannotator.voter.calibrate import fit_temperature

    if len(targets) < MIN_CALIBRATION_SAMPLES:
        return 1.0
    return float(fit_temperature(probs, targets))


def evaluate_gate(
    candidate_dir: Path,
    current_dir: Path,
    holdout: Sequence[PoolSample],
    *,
    task_labels: Sequence[str],
    margin: float,
    predict: Predictor,
    routing: Routing | None = None,
    peers: Sequence[Peer] = (),
    current_temperature: float = 1.0,
) -> GateResult:
    """Score candidate and current version on the held-out samples; :attr:`GateResult.promote` decides.

    With ``routing`` the LLM share of both is estimated on the held-out audit samples (``peers``:
    the other specialists' probabilities on those samples, in their order, with their
    temperatures); without it only the accuracy test applies.
    """
    candidate_probs = probabilities(candidate_dir, holdout, task_labels, predict)
    current_probs = probabilities(current_dir, holdout, task_labels, predict)
    targets = targets_of(holdout, task_labels)
    candidate = float((candidate_probs.argmax(axis=1) == targets).mean())
    current = float((current_probs.argmax(axis=1) == targets).mean())
    audit = np.array([s.audit for s in holdout], dtype=bool)
    audit_targets = targets[audit]
    candidate_audit = candidate_probs[audit]
    temperature = fit_version_temperature(candidate_audit, audit_targets)
    if routing is None:
        return GateResult(candidate, current, len(holdout), margin, audit_samples=int(audit.sum()),
                          candidate_temperature=temperature, current_temperature=current_temperature,
                          candidate_audit_probs=candidate_audit)
    for peer in peers:
        if len(peer.probs) != len(audit_targets):
            raise GateError(f"a peer has {len(peer.probs)} audit predictions for {len(audit_targets)} samples")
    peer_probs = [p.probs for p in peers]
    peer_temps = [p.temperature for p in peers]
    with_candidate = estimate_share([candidate_audit, *peer_probs], [temperature, *peer_temps], audit_targets,
                                    routing)
    with_current = estimate_share([current_probs[audit], *peer_probs], [current_temperature, *peer_temps],
                                  audit_targets, routing)
    return GateResult(candidate, current, len(holdout), margin, with_candidate.share, with_current.share,
                      int(audit.sum()), temperature, current_temperature, candidate_audit)
