"""mock-llm's difficulty-correlated error mode: it errs more on the records that are hard.

A real LLM does not err at random: it errs on the ambiguous records, which are the ones small
models also find hard. Independent errors flatter every router (the records it sends to review
are exactly those the LLM would get wrong more often). In this mode each record of the gold file
carries a ``difficulty`` score (any number; only its rank matters) and the wrong answers are
chosen among the gold records so that:

- exactly ``round((1 - accuracy) * n)`` of the ``n`` scored records are answered wrong, so the
  stated accuracy holds over the gold file (and, up to sampling, over any large part of it);
- the chance of a record being among them rises with its difficulty: weighted sampling without
  replacement (Efraimidis and Spirakis, 2006), weight ``exp(strength * r)`` with ``r`` the
  record's difficulty rank scaled to [0, 1], keys drawn from a hash of the seed and the id, so a
  record gets the same answer whatever batch it arrives in and across restarts.

``strength`` 0 is independent errors over the scored records; 3 (the default) makes the hardest
record about 20 times as likely to be wrong as the easiest.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

from autoannotator.exceptions import ConfigError

ERROR_MODES = ("independent", "difficulty")
DEFAULT_STRENGTH = 3.0


def _unit(seed: int, record_id: str) -> float:
    """A uniform number in (0, 1) from a hash of the seed and the id."""
    digest = hashlib.sha256(f"{seed}:difficulty:{record_id}".encode()).digest()[:8]
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


def difficulty_errors(difficulty: Mapping[str, float], accuracy: float, *, seed: int = 0,
                      strength: float = DEFAULT_STRENGTH) -> frozenset[str]:
    """The ids answered wrong: ``round((1 - accuracy) * n)`` of them, more likely the harder a record is."""
    if not 0 <= accuracy <= 1:
        raise ConfigError(f"mock-llm: accuracy {accuracy} must be between 0 and 1")
    if strength < 0:
        raise ConfigError(f"mock-llm: difficulty strength {strength} must be >= 0")
    ids = sorted(difficulty, key=lambda rid: (difficulty[rid], rid))
    n = len(ids)
    wrong = round((1 - accuracy) * n)
    if not n or not wrong:
        return frozenset()
    # log of the Efraimidis-Spirakis key u ** (1 / w): the largest keys are the sample.
    keys = {rid: math.log(_unit(seed, rid)) / math.exp(strength * (rank / max(1, n - 1)))
            for rank, rid in enumerate(ids)}
    return frozenset(sorted(ids, key=lambda rid: keys[rid], reverse=True)[:wrong])


def parse_difficulty(value: object, where: str) -> float | None:
    """A gold row's ``difficulty`` cell as a finite number (None when empty); errors name the row."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: difficulty {value!r} is not a number") from None
    if not math.isfinite(score):
        raise ConfigError(f"{where}: difficulty {value!r} is not finite")
    return score
