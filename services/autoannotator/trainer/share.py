"""How many records a set of specialist versions would send to the LLM, estimated on audit samples.

Audit samples are records the voter sent to review independently of their score (a hash of the
id, or every record while no threshold is certified), so they are a uniform sample of the
stream. On them, the routing the pipeline is configured with is replayed with the probabilities
of a given set of versions (each scaled by ITS OWN temperature):

- ``error-bounded``: :func:`~autoannotator.errorbound.certify_threshold` on the calibrated top
  mean probabilities; the records above the certified threshold are accepted;
- ``soft``: accepted when the top calibrated mean probability is ``>= tau``;
- ``vote``: accepted when ``U = 1 - max_votes / k < eps``.

The LLM share is ``1 - accepted`` plus the audit share of what is accepted (the audit stream
sends ``audit_rate`` of the accepted records to review too).

The voter's routing settings are read through :func:`routing_of` from the pipeline config, and
each version's temperature as the voter picks it (the config's ``voter.temperatures`` for that
version, else the one its release carries, else 1.0). Scores of tied consensus count as never
accepted, as in the voter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoannotator.calibration import mean_probs
from autoannotator.config import PipelineConfig
from autoannotator.errorbound import certify_threshold

POLICIES = ("error-bounded", "soft", "vote")


@dataclass(frozen=True, slots=True)
class Routing:
    """The voter's routing settings as the gate replays them."""

    policy: str = "error-bounded"
    eps: float = 0.34
    tau: float = 0.8
    target_error: float = 0.05
    audit_rate: float = 0.03
    confidence: float = 0.95
    min_samples: int = 100


def routing_of(config: PipelineConfig) -> Routing:
    """The voter's routing settings, as the voter reads them from ``config.voter``."""
    voter = config.voter
    return Routing(
        policy=voter.policy,
        eps=voter.eps,
        tau=voter.tau,
        target_error=voter.target_error,
        audit_rate=voter.audit_rate,
        confidence=voter.bound_confidence,
        min_samples=voter.min_audit_samples,
    )


def configured_temperature(config: PipelineConfig, specialist: str, version: str) -> float | None:
    """The temperature the config gives one version: ``voter.temperatures[specialist][version]`` (None: none)."""
    value = config.voter.temperatures.get(specialist, {}).get(version)
    return float(value) if value else None


@dataclass(frozen=True, slots=True)
class ShareEstimate:
    """The estimated LLM share of one set of versions, and what it rests on."""

    share: float
    samples: int
    # error-bounded: the certified threshold (inf: none certified) and its bound; nan otherwise.
    threshold: float = math.nan
    upper: float = math.nan


def estimate_share(
    per_specialist: Sequence[np.ndarray],
    temperatures: Sequence[float],
    targets: np.ndarray,
    routing: Routing,
) -> ShareEstimate:
    """The LLM share the routing would cause with these probabilities on audit samples.

    ``per_specialist[i]`` is specialist i's ``(n, labels)`` probabilities (task-label order, not
    yet calibrated), ``temperatures[i]`` its version's temperature, ``targets`` the reviewer's
    label indices. With no audit samples nothing can be estimated: the share is 1.0 (the
    conservative end, as the voter routes everything when it cannot bound the error).
    """
    n = len(targets)
    if n == 0:
        return ShareEstimate(1.0, 0)
    if routing.policy == "vote":
        votes = np.stack([np.asarray(p).argmax(axis=1) for p in per_specialist], axis=1)
        k = votes.shape[1]
        max_votes = np.array([np.bincount(row).max() for row in votes])
        accepted = float(((1.0 - max_votes / k) < routing.eps).mean())
        return ShareEstimate(_with_audit(accepted, routing.audit_rate), n)
    mean = mean_probs([np.asarray(p, dtype=np.float64) for p in per_specialist], list(temperatures))
    top = mean.max(axis=1)
    # A tie between labels is never accepted by the voter (its score is -1).
    top = np.where((mean == top[:, None]).sum(axis=1) > 1, -1.0, top)
    if routing.policy == "soft":
        accepted = float((top >= routing.tau).mean())
        return ShareEstimate(_with_audit(accepted, routing.audit_rate), n)
    correct = mean.argmax(axis=1) == np.asarray(targets)
    cert = certify_threshold(top.tolist(), correct.tolist(), routing.target_error,
                             confidence=routing.confidence, min_samples=routing.min_samples)
    return ShareEstimate(_with_audit(cert.accept_share, routing.audit_rate), n, cert.threshold, cert.upper)


def _with_audit(accepted: float, audit_rate: float) -> float:
    """Review share: what is not accepted, plus the audit share of what is."""
    return (1.0 - accepted) + audit_rate * accepted
