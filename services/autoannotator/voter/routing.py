"""Pure routing decisions over one record's predictions (DESIGN.md, "Routing").

Two policies, both over probability vectors already in task-label order:

- :func:`vote` — the paper: each specialist votes its top label, the majority wins,
  ``U = 1 - max_votes / k`` with ``k`` the number of *configured* specialists (a missing or
  failed specialist is a missing vote, so it can only raise ``U``); accept when ``U < eps``.
- :func:`soft` — each specialist's probabilities are temperature-scaled
  (``softmax(log p / T)``, T fitted for that model version) and averaged; accept when the top mean
  probability is ``>= tau``.
- ``error-bounded`` — the same calibrated mean, accepted when it reaches the threshold certified
  for the set of model versions that voted (:mod:`autoannotator.voter.audit`): the lowest one
  whose upper confidence bound on accepted-label error is within ``target_error``. Until a set has
  a certified threshold, every record of it goes to review and joins the audit stream.

Under every policy, a hash-chosen share (``audit_rate``) of the records consensus would accept
goes to review anyway as audit samples, and records reviewed anyway carry the same audit flag when
the hash chooses them: those outcomes are a uniform sample of the stream.

Under both, a tie for the top label is never accepted: breaking it would guess a label.
:class:`Router` applies the record-level rules around them: a ``BAD_INPUT`` prediction rejects
the record, ``ERROR`` or malformed predictions count as missing votes, and fewer usable votes
than ``quorum`` route the record to review (reason ``cold_start`` when a specialist said it has no
model version yet: until the trainer's first round, every record is reviewed). Under error-bounded
routing a specialist with no version yet does not count against the quorum, so the first
specialists to get a version start routing (their set has its own certified window). Plain Python on
short lists: for k=3 and a handful of labels that is several times faster than numpy's per-call
overhead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from autoannotator.config import PipelineConfig
from autoannotator.errorbound import ACCEPT_NOTHING, Certified, audit_chosen
from autoannotator.voter.exceptions import VoterConfigError
from autoannotator.wire import Prediction, PredictionStatus, argmax, check_probs

Route = Literal["label", "hard", "rejected"]
Policy = Literal["vote", "soft", "error-bounded"]
#: (specialist, model version) -> temperature fitted for that version.
TemperatureOf = Callable[[str, str], float]
#: Version set (sorted (specialist, version) pairs) -> its certified threshold.
ThresholdOf = Callable[[tuple[tuple[str, str], ...]], Certified]

_UNCERTIFIED = Certified(ACCEPT_NOTHING, 0, 0, math.nan, math.nan)

OK = PredictionStatus.PREDICTION_STATUS_OK
BAD_INPUT = PredictionStatus.PREDICTION_STATUS_BAD_INPUT
ERROR = PredictionStatus.PREDICTION_STATUS_ERROR
NO_MODEL = PredictionStatus.PREDICTION_STATUS_NO_MODEL


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a policy says about a set of probability vectors."""

    label_index: int
    confidence: float
    uncertainty: float
    accepted: bool
    tie: bool


@dataclass(slots=True)
class Decision:
    """The one outcome of a record: a label, a hard sample, or a rejection."""

    outcome: Route
    # hard: disagreement | low_confidence | uncertified | audit | timeout | specialist_error;
    # rejected: the input's reason.
    reason: str = ""
    detail: str = ""
    label_index: int = -1
    label: str = ""
    confidence: float = 0.0
    uncertainty: float = 1.0
    policy: str = ""
    # The predictions the decision counted (OK and well-formed), in arrival order.
    votes: list[Prediction] = field(default_factory=list)
    # Their probabilities in task-label order, parallel to ``votes``.
    vectors: list[list[float]] = field(default_factory=list)
    # Reviewed as an audit sample (chosen independently of the score).
    audit: bool = False
    # The calibrated mean: its top label and probability (-1: a tie), whatever the policy.
    consensus_label: str = ""
    score: float = 0.0
    # error-bounded: the threshold that applied (inf: none certified yet).
    threshold: float = math.nan
    versions: tuple[tuple[str, str], ...] = ()


def vote(probs: Sequence[Sequence[float]], k: int, eps: float) -> Verdict:
    """The paper's majority vote over ``probs`` (one vector per usable specialist).

    ``k`` is the number of configured specialists; ``len(probs)`` may be smaller when some are
    missing. Confidence is the mean probability the voters gave the winning label.
    """
    if not probs:
        return Verdict(-1, 0.0, 1.0, False, False)
    counts: dict[int, int] = {}
    for vector in probs:
        top = vector.index(max(vector))  # argmax, inlined: this loop is the voter's hot path
        counts[top] = counts.get(top, 0) + 1
    winner = max(counts, key=counts.__getitem__)
    max_votes = counts[winner]
    tie = sum(1 for c in counts.values() if c == max_votes) > 1
    uncertainty = 1.0 - max_votes / k
    confidence = sum(vector[winner] for vector in probs) / len(probs)
    return Verdict(winner, confidence, uncertainty, uncertainty < eps and not tie, tie)


def temperature_scale(vector: Sequence[float], temperature: float) -> list[float]:
    """``softmax(log p / T)``, computed as ``p**(1/T)`` renormalised (zeros stay zero)."""
    if temperature == 1.0:
        return list(vector)
    inv = 1.0 / temperature
    scaled = [p**inv if p > 0 else 0.0 for p in vector]
    total = sum(scaled)
    if total <= 0:
        # Every entry underflowed: the vector carries no information beyond its argmax.
        scaled = [0.0] * len(vector)
        scaled[argmax(vector)] = 1.0
        return scaled
    return [s / total for s in scaled]


def soft(probs: Sequence[Sequence[float]], temperatures: Sequence[float], tau: float) -> Verdict:
    """Mean of the temperature-scaled vectors; accept when the top mean is ``>= tau`` and unique."""
    if not probs:
        return Verdict(-1, 0.0, 1.0, False, False)
    n = len(probs[0])
    mean = [0.0] * n
    for vector, temperature in zip(probs, temperatures, strict=True):
        scaled = temperature_scale(vector, temperature)
        for i in range(n):
            mean[i] += scaled[i]
    count = len(probs)
    mean = [m / count for m in mean]
    best = argmax(mean)
    top = mean[best]
    tie = sum(1 for m in mean if m == top) > 1
    return Verdict(best, top, 1.0 - top, top >= tau and not tie, tie)


def required_votes(quorum: int, k: int, predictions: Sequence[Prediction], policy: str) -> int:
    """See :meth:`Router.required_votes` (shared with the audit window, which counts votes the same way).

    ``k`` is the number of configured specialists; one whose prediction has not arrived counts as
    serving (a missing vote), so only an explicit ``NO_MODEL`` lowers the requirement.
    """
    if policy != "error-bounded":
        return quorum
    without_model = len({p.specialist for p in predictions if p.status == NO_MODEL})
    return max(1, min(quorum, k - without_model))


class Router:
    """Applies the configured policy to one record's predictions (thread-safe; state lives in the callables)."""

    def __init__(
        self,
        labels: Sequence[str],
        specialists: Sequence[str],
        *,
        policy: Policy = "vote",
        eps: float = 0.34,
        tau: float = 0.8,
        quorum: int = 2,
        audit_rate: float = 0.0,
        temperature: TemperatureOf | None = None,
        threshold: ThresholdOf | None = None,
    ) -> None:
        if not specialists:
            raise VoterConfigError("specialists: the voter needs at least one configured specialist")
        if quorum > len(specialists):
            raise VoterConfigError(f"voter.quorum ({quorum}) exceeds the number of specialists ({len(specialists)})")
        self.labels = list(labels)
        self.specialists = list(specialists)
        self.k = len(self.specialists)
        self.policy = policy
        self.eps = eps
        self.tau = tau
        self.quorum = quorum
        self.audit_rate = audit_rate
        self.temperature: TemperatureOf = temperature or (lambda _name, _version: 1.0)
        self.threshold: ThresholdOf = threshold or (lambda _versions: _UNCERTIFIED)

    @classmethod
    def from_config(cls, config: PipelineConfig, *, temperature: TemperatureOf | None = None,
                    threshold: ThresholdOf | None = None) -> Router:
        """The router the config describes (``task.labels``, ``specialists``, ``voter``)."""
        voter = config.voter
        if temperature is None:
            configured = voter.temperatures

            def temperature(name: str, version: str) -> float:
                return configured.get(name, {}).get(version, 1.0)

        return cls(
            config.task.labels,
            [spec.name for spec in config.specialists],
            policy=voter.policy,
            eps=voter.eps,
            tau=voter.tau,
            quorum=voter.quorum,
            audit_rate=voter.audit_rate,
            temperature=temperature,
            threshold=threshold,
        )

    def required_votes(self, predictions: Sequence[Prediction]) -> int:
        """Usable votes a record needs: ``quorum``, or fewer under error-bounded routing while some
        specialists have no model version yet (cold start).

        A specialist that answered ``NO_MODEL`` is not deployed yet rather than missing. Under
        error-bounded routing the set of versions that voted is certified on its own audit window,
        so the first specialists to get a version may label records before the others have one
        (at least one vote is always needed). Under ``vote`` and ``soft`` the quorum stays as
        configured: their thresholds carry no bound for a smaller set.
        """
        return required_votes(self.quorum, self.k, predictions, self.policy)

    def decide(self, predictions: Sequence[Prediction], *, timed_out: bool = False, record_id: str = "") -> Decision:
        """Decide a record from the predictions that arrived (all k, or fewer after a timeout)."""
        for prediction in predictions:
            if prediction.status == BAD_INPUT:
                return Decision("rejected", reason=prediction.reason or "bad_input",
                                detail=f"specialist {prediction.specialist}: {prediction.detail or 'bad input'}",
                                policy=self.policy)
        usable: list[Prediction] = []
        vectors: list[list[float]] = []
        problems: list[str] = []
        for prediction in predictions:
            if prediction.status != OK:
                problems.append(f"{prediction.specialist or '?'}: {prediction.reason or 'error'}")
                continue
            probs, why = check_probs(prediction, self.labels)
            if probs is None:
                problems.append(f"{prediction.specialist}: {why}")
                continue
            usable.append(prediction)
            vectors.append(probs)
        # The calibrated mean is computed under every policy: it is what audit samples measure.
        mean = soft(vectors, [self.temperature(p.specialist, p.model_version) for p in usable], self.tau)
        versions = tuple(sorted((p.specialist, p.model_version) for p in usable))
        threshold = math.nan
        if self.policy == "vote":
            verdict = vote(vectors, self.k, self.eps)
        elif self.policy == "soft":
            verdict = mean
        else:
            threshold = self.threshold(versions).threshold if usable else ACCEPT_NOTHING
            verdict = Verdict(mean.label_index, mean.confidence, mean.uncertainty,
                              mean.confidence >= threshold and not mean.tie, mean.tie)
        decision = Decision(
            "hard",
            label_index=verdict.label_index,
            label=self.labels[verdict.label_index] if verdict.label_index >= 0 else "",
            confidence=verdict.confidence,
            uncertainty=verdict.uncertainty,
            policy=self.policy,
            votes=usable,
            vectors=vectors,
            detail="; ".join(problems),
            consensus_label=self.labels[mean.label_index] if mean.label_index >= 0 else "",
            score=-1.0 if mean.tie else mean.confidence,
            threshold=threshold,
            versions=versions,
        )
        if len(usable) < self.required_votes(predictions):
            if any(p.status == NO_MODEL for p in predictions):
                # Every record is reviewed until the first versions serve: a uniform sample of the
                # stream, flagged as audit like the records of an uncertified version set.
                decision.reason, decision.audit = "cold_start", True
            else:
                decision.reason = "timeout" if timed_out else "specialist_error"
            decision.label, decision.label_index = "", -1
            return decision
        chosen = audit_chosen(record_id, self.audit_rate) if record_id else False
        if verdict.accepted:
            if chosen:
                decision.reason, decision.audit = "audit", True
            else:
                decision.outcome = "label"
        elif threshold == ACCEPT_NOTHING:
            # No certified threshold for these versions: everything is reviewed, so every outcome is
            # a uniform sample of the stream — all of it feeds the window.
            decision.reason, decision.audit = "uncertified", True
        else:
            decision.reason = "disagreement" if self.policy == "vote" else "low_confidence"
            decision.audit = chosen
        return decision
