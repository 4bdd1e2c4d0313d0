"""Agreement between labellers: Cohen's kappa per pair of people, and the LLM against people.

Two sources, both read from the review queue's ``answers``:

* overlap (``reviewer.human.overlap``): records two people labelled independently;
* the LLM audit (``reviewer.human_audit_rate``): LLM-labelled records a person labelled as well.

Cohen's kappa is ``(p_o - p_e) / (1 - p_e)``: observed agreement corrected for the agreement the
two labellers' label frequencies would give by chance. With one label only (``p_e`` = 1) it is
1 when they agree on everything, else 0.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations

from autoannotator.reviewer.metrics import (
    LLM_HUMAN_AGREEMENT,
    LLM_HUMAN_AUDITED,
    LLM_HUMAN_KAPPA,
    PAIR_ITEMS,
    PAIR_KAPPA,
)
from autoannotator.reviewer.queue import ReviewQueue


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of (first labeller, second labeller) label pairs; None without pairs."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[k] * second[k] for k in first) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def pair_agreement(answers: list[tuple[str, str, str]]) -> list[dict]:
    """Per pair of people (names sorted): records both labelled, raw agreement and Cohen's kappa."""
    by_record: dict[str, dict[str, str]] = defaultdict(dict)
    for rid, person, label in answers:
        by_record[rid][person] = label
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for labels in by_record.values():
        for a, b in combinations(sorted(labels), 2):
            pairs[(a, b)].append((labels[a], labels[b]))
    return [
        {"a": a, "b": b, "items": len(got), "agreement": sum(x == y for x, y in got) / len(got),
         "kappa": cohen_kappa(got)}
        for (a, b), got in sorted(pairs.items())
    ]


def llm_agreement(audits: list[tuple[str, str]]) -> dict:
    """The LLM against the first person on audited records: count, raw agreement, Cohen's kappa."""
    n = len(audits)
    return {"items": n, "agreement": (sum(a == b for a, b in audits) / n) if n else None,
            "kappa": cohen_kappa(audits)}


def stats(queue: ReviewQueue) -> dict:
    """Agreement figures from the queue, and the same figures published as metrics."""
    pairs = pair_agreement(queue.answers())
    llm = llm_agreement(queue.llm_audits())
    for p in pairs:
        name = f"{p['a']}|{p['b']}"
        PAIR_ITEMS.labels(name).set(p["items"])
        PAIR_KAPPA.labels(name).set(p["kappa"])
    LLM_HUMAN_AUDITED.set(llm["items"])
    if llm["items"]:
        LLM_HUMAN_AGREEMENT.set(llm["agreement"])
        LLM_HUMAN_KAPPA.set(llm["kappa"])
    return {"pairs": pairs, "llm": llm}
