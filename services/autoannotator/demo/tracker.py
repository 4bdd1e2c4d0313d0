"""Following a run from the outside: outcomes per record, predictions, releases, service metrics.

Used by ``demo`` and ``annotate`` to show progress and to build their summaries. It reads the
topics without a consumer group (:class:`~autoannotator.stream.reader.TopicReader`), so it
never disturbs the services' offsets.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from autoannotator.config import PipelineConfig
from autoannotator.stream.reader import TopicReader
from autoannotator.wire import (
    RELEASES_TOPIC,
    HardSample,
    ModelRelease,
    PredictionStatus,
    decode,
    label_source_name,
    now_ms,
    text_sha256,
)


@dataclass
class RecordOutcome:
    """The decision about one record as it came out of the pipeline."""

    label: str | None
    source: str
    confidence: float
    reason: str = ""
    detail: str = ""
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_versions: dict[str, str] = field(default_factory=dict)
    decided_ms: int = 0


@dataclass
class Tracker:
    """Reads ``labels``, ``rejected``, ``predictions`` and ``model-releases`` as they grow."""

    config: PipelineConfig
    bootstrap: str
    outcomes: dict[str, RecordOutcome] = field(default_factory=dict)
    # (record id, text sha256 or "" when the outcome names no text) -> first outcome: one per
    # message, so a second text under an id has its own (a conflicting_duplicate rejection).
    by_text: dict[tuple[str, str], RecordOutcome] = field(default_factory=dict)
    duplicates: int = 0
    # record id -> specialist -> argmax label (first prediction wins)
    predictions: dict[str, dict[str, str]] = field(default_factory=dict)
    releases: list[ModelRelease] = field(default_factory=list)
    # record id -> the hard sample, for records routed to review (decided or not yet)
    hard: dict[str, HardSample] = field(default_factory=dict)
    # (specialist, version) serving when the run began: announced again, they are not new releases.
    serving_at_start: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        kafka = self.config.kafka
        self._readers = {
            name: TopicReader(kafka, self.bootstrap, name)
            for name in ("labels", "rejected", "predictions", RELEASES_TOPIC, "hard")
        }
        self._labels = list(self.config.task.labels)

    def poll(self, timeout_s: float = 0.1) -> int:
        """Read what arrived; returns the number of new outcomes."""
        before = len(self.outcomes)
        for msg in self._readers["labels"].poll(timeout_s, 5000):
            label, rid = decode("labels", msg)
            digest = text_sha256(label.record.text) if label.HasField("record") else ""
            self._add(rid, digest, RecordOutcome(
                label=label.label, source=label_source_name(label), confidence=label.confidence,
                cost_usd=label.cost.usd, prompt_tokens=label.cost.prompt_tokens,
                completion_tokens=label.cost.completion_tokens, model_versions=dict(label.model_versions),
                decided_ms=label.decided_ms or now_ms(),
            ))
        for msg in self._readers["rejected"].poll(0, 5000):
            rejection, rid = decode("rejected", msg)
            digest = rejection.text_sha256 or (text_sha256(rejection.record.text)
                                               if rejection.HasField("record") else "")
            self._add(rid, digest, RecordOutcome(None, "rejected", 0.0, reason=rejection.reason,
                                                 detail=rejection.detail,
                                                 decided_ms=rejection.rejected_ms or now_ms()))
        for msg in self._readers["predictions"].poll(0, 5000):
            pred, rid = decode("predictions", msg)
            if pred.status == PredictionStatus.PREDICTION_STATUS_OK and len(pred.probs) == len(self._labels):
                votes = self.predictions.setdefault(rid, {})
                votes.setdefault(pred.specialist, self._labels[int(np.argmax(pred.probs))])
        for msg in self._readers["hard"].poll(0, 5000):
            hard, rid = decode("hard", msg)
            self.hard.setdefault(rid, hard)
        for msg in self._readers[RELEASES_TOPIC].poll(0, 100):
            release = decode(RELEASES_TOPIC, msg)[0]
            # A version announced again (the trainer re-announces the other specialists' current
            # versions with their held-out predictions) is not a new release.
            if (release.specialist, release.version) in self.serving_at_start:
                continue
            if not any(r.specialist == release.specialist and r.version == release.version for r in self.releases):
                self.releases.append(release)
        return len(self.outcomes) - before

    def _add(self, rid: str, digest: str, outcome: RecordOutcome) -> None:
        self.by_text.setdefault((rid, digest), outcome)
        if rid in self.outcomes:
            self.duplicates += 1
            return
        self.outcomes[rid] = outcome

    def outcome_for(self, rid: str, text: str, *, shared_id: bool) -> RecordOutcome | None:
        """The outcome of the message (``rid``, ``text``).

        With ``shared_id`` (the input has other texts under this id) only an outcome naming this
        text counts: the id's first outcome may be another text's.
        """
        outcome = self.by_text.get((rid, text_sha256(text))) or self.by_text.get((rid, ""))
        if outcome is None and not shared_id:
            outcome = self.outcomes.get(rid)
        return outcome

    def decided(self, ids: set[str]) -> int:
        """How many of ``ids`` have an outcome."""
        return sum(1 for rid in ids if rid in self.outcomes)

    def close(self) -> None:
        """Close the readers."""
        for reader in self._readers.values():
            reader.close()


def scrape(url: str, timeout_s: float = 3.0) -> dict[str, float]:
    """A service's /metrics as ``{'name{label="v",...}': value}`` (empty when unreachable)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
    except OSError:
        return {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def metric_sum(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
