"""Token-budget batch planning, shared by the engine's offline ``predict`` and the specialist's batcher.

A batch closes when its padded size (longest record x records) would pass ``max_batch_tokens``
or it holds ``max_batch_size`` records; records are sorted by length first, so a batch holds
records of similar length and little of it is padding.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches by the token budget, shortest records first.

    Every batch but possibly the last is full: adding its next record would pass the budget or
    the size limit. A record longer than the whole budget travels alone.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = lengths[index]
        padded = max(longest, length) * (len(current) + 1)
        if current and (padded > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches
