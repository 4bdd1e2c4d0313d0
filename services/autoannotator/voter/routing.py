"""Pure routing decisions over one record's predictions (DESIGN.md, "Routing").

Two policies, both over probability vectors already in task-label order:

- :func:`vote` — the paper: each specialist votes its top label, the majority wins,
  ``U = 1 - max_votes / k`` with ``k`` the number of *configured* specialists (a missing or
  failed specialist is a missing vote, so it can only raise ``U``); accept when ``U < eps``.
- :func:`soft` — each specialist's probabilities are temperature-scaled
  (``softmax(log p / T)``) and averaged; accept when the top mean probability is ``>= tau``.

Under both, a tie for the top label is never accepted: breaking it would guess a label.
:class:`Router` applies the record-level rules around them: a ``BAD_INPUT`` prediction rejects
the record, ``ERROR`` or malformed predictions count as missing votes, and fewer usable votes
than ``quorum`` route the record to review. Plain Python on short lists: for k=3 and a handful
of labels that is several times faster than numpy's per-call overhead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from autoannotator.config import PipelineConfig
from autoannotator.v1.records_pb2 import Prediction, PredictionStatus
from autoannotator.voter.exceptions import VoterConfigError

Outcome = Literal["label", "hard", "rejected"]

OK = PredictionStatus.PREDICTION_STATUS_OK
BAD_INPUT = PredictionStatus.PREDICTION_STATUS_BAD_INPUT
ERROR = PredictionStatus.PREDICTION_STATUS_ERROR

# A probability vector may be off by float32 rounding, not more.
_SUM_TOLERANCE = 1e-3


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

    outcome: Outcome
    # hard: disagreement | low_confidence | timeout | specialist_error; rejected: the input's reason.
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


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value (the first one on an exact tie)."""
    return values.index(max(values))  # two C calls: faster than a Python loop for short vectors


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


def check_probs(prediction: Prediction, labels: list[str]) -> tuple[list[float] | None, str]:
    """The prediction's probabilities in task-label order, or ``(None, why)`` when unusable.

    A prediction that names its labels in another order is re-ordered by name; one that names
    other labels, has the wrong length, or is not a probability vector is unusable.
    """
    probs = list(prediction.probs)
    if prediction.labels and prediction.labels != labels:
        named = list(prediction.labels)
        if sorted(named) != sorted(labels) or len(named) != len(probs):
            return None, f"labels {named} are not the task labels {list(labels)}"
        by_name = dict(zip(named, probs, strict=True))
        probs = [by_name[label] for label in labels]
    if len(probs) != len(labels):
        return None, f"{len(probs)} probabilities for {len(labels)} labels"
    total = sum(probs)
    # `not <=` also catches NaN and infinities, which propagate into the sum.
    if not abs(total - 1.0) <= _SUM_TOLERANCE:
        return None, f"probabilities sum to {total:.4f}, not 1"
    if min(probs) < 0.0:
        return None, "negative probabilities"
    return probs, ""


class Router:
    """Applies the configured policy to one record's predictions (stateless, thread-safe)."""

    def __init__(
        self,
        labels: Sequence[str],
        specialists: Sequence[str],
        *,
        policy: Literal["vote", "soft"] = "vote",
        eps: float = 0.34,
        tau: float = 0.8,
        temperatures: Mapping[str, Mapping[str, float] | float] | None = None,
        quorum: int = 2,
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
        self.temperatures = {name: 1.0 for name in self.specialists} | dict(temperatures or {})
        self.quorum = quorum

    def temperature(self, specialist: str, version: str) -> float:
        """The temperature fitted for this specialist's version (1.0 for a version never calibrated)."""
        fitted = self.temperatures.get(specialist, 1.0)
        if isinstance(fitted, Mapping):
            return float(fitted.get(version, 1.0))
        return float(fitted)

    @classmethod
    def from_config(cls, config: PipelineConfig) -> Router:
        """The router the config describes (``task.labels``, ``specialists``, ``voter``)."""
        voter = config.voter
        return cls(
            config.task.labels,
            [spec.name for spec in config.specialists],
            policy=voter.policy,
            eps=voter.eps,
            tau=voter.tau,
            temperatures=voter.temperatures,
            quorum=voter.quorum,
        )

    def decide(self, predictions: Sequence[Prediction], *, timed_out: bool = False) -> Decision:
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
        if self.policy == "vote":
            verdict = vote(vectors, self.k, self.eps)
        else:
            verdict = soft(vectors, [self.temperature(p.specialist, p.model_version) for p in usable], self.tau)
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
        )
        if len(usable) < self.quorum:
            decision.reason = "timeout" if timed_out else "specialist_error"
            decision.label, decision.label_index = "", -1
        elif verdict.accepted:
            decision.outcome = "label"
        else:
            decision.reason = "disagreement" if self.policy == "vote" else "low_confidence"
        return decision

