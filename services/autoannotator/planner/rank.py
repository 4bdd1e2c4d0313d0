"""Rank catalog models for a task (the paper's Eq. 1) and keep k diverse ones.

Score: cosine similarity between the task description's embedding and each model description's.
Order: models whose labels all map onto the task's come first, then those whose labels map but miss
some task label (a binary sentiment model for a three-way task), then those with unmapped labels;
within a tier by similarity, and similarities equal to three decimals are ties broken by downloads.
Only models at or above ``min_similarity`` are chosen; a task none reaches is reported as having no
good match rather than padded with unrelated models. Diversity: the k picks prefer distinct authors,
base checkpoints and architectures, so the vote is not k fine-tunes of one checkpoint when others fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autoannotator.planner.catalog import ModelCard
from autoannotator.planner.labelmap import LabelMapping, map_labels

DEFAULT_MIN_SIMILARITY = 0.35

FULL_FIT, PARTIAL_FIT, NO_FIT = 0, 1, 2


@dataclass
class Candidate:
    """One model scored for the task, with its proposed label mapping and anything the user must know."""

    card: ModelCard
    similarity: float
    mapping: LabelMapping
    flags: list[str] = field(default_factory=list)

    @property
    def fit(self) -> int:
        """FULL_FIT, PARTIAL_FIT (some task labels never predicted) or NO_FIT (unmapped model labels)."""
        if not self.mapping.complete:
            return NO_FIT
        return PARTIAL_FIT if self.mapping.uncovered else FULL_FIT

    def sort_key(self) -> tuple[int, float, int]:
        """Fit tier, then similarity (3 decimals), then popularity."""
        return (self.fit, -round(self.similarity, 3), -(self.card.downloads or 0))


@dataclass
class Ranking:
    """The outcome of ranking: every candidate in order, the k chosen, and notes for the user."""

    task: str
    labels: list[str]
    k: int
    min_similarity: float
    candidates: list[Candidate]
    chosen: list[Candidate]
    notes: list[str] = field(default_factory=list)

    @property
    def no_good_match(self) -> bool:
        """No model reaches the similarity threshold."""
        return not self.chosen

def _flags(card: ModelCard, mapping: LabelMapping) -> list[str]:
    flags = []
    if mapping.labels_unknown:
        flags.append("labels not recorded in the catalog")
    elif mapping.unmapped:
        flags.append(f"{len(mapping.unmapped)} of {len(card.labels or [])} labels unmapped")
    if mapping.uncovered and not mapping.labels_unknown:
        flags.append(f"never predicts {', '.join(mapping.uncovered)}")
    if card.pipeline_tag == "zero-shot-classification":
        flags.append("zero-shot NLI model, not a drop-in classifier")
    return flags


def _pick_diverse(ordered: list[Candidate], k: int) -> list[Candidate]:
    """Greedy picks: prefer a new author, base checkpoint and architecture; relax only when nothing else fits."""
    chosen: list[Candidate] = []

    def distinct_all(c: Candidate) -> bool:
        return all(
            c.card.author != o.card.author
            and (c.card.base_model or c.card.id) != (o.card.base_model or o.card.id)
            and (c.card.architecture is None or c.card.architecture != o.card.architecture)
            for o in chosen
        )

    def distinct_author(c: Candidate) -> bool:
        return all(
            c.card.author != o.card.author and (c.card.base_model or c.card.id) != (o.card.base_model or o.card.id)
            for o in chosen
        )

    rules: list[Callable[[Candidate], bool]] = [distinct_all, distinct_author, lambda c: True]
    for tiers in ((FULL_FIT, PARTIAL_FIT), (FULL_FIT, PARTIAL_FIT, NO_FIT)):
        for rule in rules:
            for cand in ordered:
                if len(chosen) >= k:
                    return chosen
                if cand.fit in tiers and cand not in chosen and rule(cand):
                    chosen.append(cand)
    return chosen


def rank(
    cards: list[ModelCard] | tuple[ModelCard, ...],
    card_vectors: np.ndarray,
    task_vector: np.ndarray,
    task: str,
    labels: list[str],
    k: int = 3,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    overrides: dict[str, dict[str, str]] | None = None,
    language: str | None = "en",
) -> Ranking:
    """Score every card against the task, map its labels, order them and choose k diverse ones.

    Models for another language than ``language`` (None: any) are listed but never chosen.
    """
    overrides = overrides or {}
    similarities = card_vectors @ task_vector
    candidates = []
    for card, similarity in zip(cards, similarities, strict=True):
        mapping = map_labels(card.labels, labels, card.label_meanings, overrides.get(card.id))
        flags = _flags(card, mapping)
        if not card.speaks(language):
            flags.append(f"for {'/'.join(card.languages or [])} text, not {language}")
        candidates.append(Candidate(card, float(similarity), mapping, flags))
    usable = [c for c in candidates if c.card.speaks(language)]
    strong = sorted((c for c in usable if c.similarity >= min_similarity), key=Candidate.sort_key)
    weak = sorted((c for c in candidates if c not in strong), key=lambda c: -c.similarity)
    chosen = _pick_diverse(strong, k)
    notes = []
    if not chosen:
        notes.append(
            f"no good match: no model in the catalog is similar enough to this task (best similarity "
            f"{max((c.similarity for c in candidates), default=0.0):.3f} < {min_similarity}); describe the task "
            "differently, try --hub, or train specialists from scratch"
        )
    elif len(chosen) < k:
        notes.append(f"only {len(chosen)} model(s) reach similarity {min_similarity}; asked for k={k}")
    for cand in chosen:
        if cand.fit == NO_FIT:
            notes.append(f"{cand.card.id}: chosen although its labels do not all map (nothing better fits)")
    return Ranking(task, list(labels), k, min_similarity, strong + weak, chosen, notes)
