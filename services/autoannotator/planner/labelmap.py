"""Map a model's own labels (``id2label``: ``LABEL_0``, ``NEG``, ``toxic``) onto the task's labels.

In order, for each model label: the model card's stated meaning of a generic name (``LABEL_0`` ->
negative, from the catalog), then name normalisation (case, ``_``/``-``, abbreviations such as
``NEG``/``NEU``/``POS``, intensifiers such as "very"), then synonym groups (toxic/insult/offensive;
non-toxic/clean/normal; spam/ham ...), then, when configured, the LLM. A model label that still has
no task label, or that fits two task labels equally, is left **unmapped** with the reason: the user
decides; nothing is guessed silently.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from autoannotator.planner.exceptions import ProposalError

# Abbreviations and spellings that name the same thing.
ALIASES = {
    "neg": "negative", "neu": "neutral", "pos": "positive", "negatif": "negative", "positif": "positive",
    "nothate": "not hate", "nonhate": "not hate", "nontoxic": "not toxic", "hatespeech": "hate speech",
    "nonoffensive": "not offensive", "sci/tech": "science technology", "scitech": "science technology",
    "happiness": "joy", "happy": "joy", "sad": "sadness", "angry": "anger", "scared": "fear", "afraid": "fear",
    "disgusted": "disgust", "surprised": "surprise",
}
INTENSIFIERS = ("very ", "strongly ", "extremely ", "highly ", "slightly ", "mildly ", "somewhat ")
NEGATIONS = ("non ", "not ", "no ")

# Synonym groups: a model label and a task label in the same group denote the same class.
SYNONYMS: dict[str, frozenset[str]] = {
    "negative": frozenset({"negative", "bad", "bearish", "unfavorable", "unfavourable"}),
    "positive": frozenset({"positive", "good", "bullish", "favorable", "favourable"}),
    "neutral": frozenset({"neutral", "mixed", "objective"}),
    "toxic": frozenset({
        "toxic", "toxicity", "severe toxic", "severe toxicity", "offensive", "offense", "insult", "insulting",
        "obscene", "obscenity", "threat", "identity hate", "identity attack", "abusive", "abuse", "profanity",
        "profane", "hate", "hateful", "hate speech", "inappropriate", "violent", "harmful", "harassment",
    }),
    "not toxic": frozenset({
        "not toxic", "clean", "normal", "neutral", "ok", "safe", "acceptable", "benign", "appropriate", "harmless",
        "not offensive", "not hate", "not hateful", "not abusive", "not hate speech", "not insult",
    }),
    "spam": frozenset({"spam", "junk", "unsolicited"}),
    "ham": frozenset({"ham", "not spam", "legitimate", "legit"}),
    "human": frozenset({"human", "real", "human written", "human-written"}),
    "machine": frozenset({"machine", "ai", "generated", "machine generated", "ai generated", "fake", "chatgpt", "gpt"}),
}


def normalise(label: str) -> str:
    """Lower case, separators to spaces, known abbreviations expanded, intensifiers dropped."""
    text = label.strip().lower()
    text = re.sub(r"[_\-\s]+", " ", text).strip()
    text = ALIASES.get(text.replace(" ", ""), ALIASES.get(text, text))
    for prefix in INTENSIFIERS:
        if text.startswith(prefix):
            text = text[len(prefix):]
    return ALIASES.get(text, text)


def _groups(term: str) -> set[str]:
    """The synonym groups a normalised term belongs to (a negated term joins its group's negation)."""
    found = {name for name, members in SYNONYMS.items() if term in members}
    for prefix in NEGATIONS:
        if term.startswith(prefix):
            positive = term[len(prefix):]
            if any(positive in SYNONYMS[name] for name in ("toxic",)):
                found.add("not toxic")
            if positive in SYNONYMS["spam"]:
                found.add("ham")
    return found


@dataclass(frozen=True)
class MappedLabel:
    """One model label and what became of it: a task label with its source, or ``None`` with the reason."""

    model_label: str
    task_label: str | None
    # "name", "synonym", "card", "llm", "user"; or "unmapped".
    source: str
    reason: str = ""


@dataclass
class LabelMapping:
    """A model's labels against the task's: the proposed ``label_map`` and everything left unmapped."""

    entries: list[MappedLabel] = field(default_factory=list)
    task_labels: list[str] = field(default_factory=list)
    # True when the model's labels are not known at all (nothing could be mapped).
    labels_unknown: bool = False

    @property
    def label_map(self) -> dict[str, str]:
        """Model label -> task label, for the mapped ones (what ``SpecialistConfig.label_map`` takes)."""
        return {e.model_label: e.task_label for e in self.entries if e.task_label is not None}

    @property
    def unmapped(self) -> list[MappedLabel]:
        """Model labels without a task label."""
        return [e for e in self.entries if e.task_label is None]

    @property
    def uncovered(self) -> list[str]:
        """Task labels that no model label maps onto (the model can never predict them)."""
        covered = set(self.label_map.values())
        return [label for label in self.task_labels if label not in covered]

    @property
    def complete(self) -> bool:
        """Every model label has a task label (the config can be written without pretending)."""
        return not self.labels_unknown and not self.unmapped

    def summary(self) -> str:
        """One line for the plan table, e.g. ``NEG→negative NEU→neutral POS→positive``."""
        if self.labels_unknown:
            return "labels unknown (check the model card)"
        parts = [f"{e.model_label}→{e.task_label}" if e.task_label else f"{e.model_label}→?" for e in self.entries]
        return " ".join(parts)


def _rule_match(label: str, meaning: str | None, task_labels: list[str]) -> MappedLabel:
    """Name, card and synonym rules for one model label."""
    by_norm = {normalise(t): t for t in task_labels}
    source = "card" if meaning else "name"
    term = normalise(meaning or label)
    if term in by_norm:
        return MappedLabel(label, by_norm[term], source)
    groups = _groups(term)
    if groups:
        hits = sorted({t for norm, t in by_norm.items() if _groups(norm) & groups}, key=task_labels.index)
        if len(hits) == 1:
            return MappedLabel(label, hits[0], "card" if meaning else "synonym")
        if len(hits) > 1:
            return MappedLabel(label, None, "unmapped", f"ambiguous: fits {', '.join(hits)}")
    if re.fullmatch(r"label \d+", term):
        return MappedLabel(label, None, "unmapped", "generic name and the card's meaning is not recorded")
    shown = f"{label!r} (card: {meaning!r})" if meaning else repr(label)
    return MappedLabel(label, None, "unmapped", f"{shown} matches no task label")


def map_labels(
    model_labels: list[str] | None,
    task_labels: list[str],
    meanings: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
) -> LabelMapping:
    """Map ``model_labels`` onto ``task_labels`` by user overrides, the card, names and synonyms."""
    if model_labels is None:
        return LabelMapping([], list(task_labels), labels_unknown=True)
    meanings = meanings or {}
    overrides = overrides or {}
    unknown = set(overrides) - set(model_labels)
    if unknown:
        raise ProposalError(f"--map names labels the model does not have: {sorted(unknown)} (it has {model_labels})")
    stray = set(overrides.values()) - set(task_labels)
    if stray:
        raise ProposalError(f"--map maps onto labels not in the task: {sorted(stray)} (task: {task_labels})")
    entries = []
    for label in model_labels:
        if label in overrides:
            entries.append(MappedLabel(label, overrides[label], "user"))
        else:
            entries.append(_rule_match(label, meanings.get(label), task_labels))
    return LabelMapping(entries, list(task_labels))


class LLMLabelMapper:
    """Asks an OpenAI-compatible chat-completions endpoint for the labels the rules left unmapped.

    The answer must be JSON ``{"model label": "task label" | null}``; anything outside the task's label
    set is refused, and ``null`` stays unmapped (the LLM may say it does not know).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self._timeout_s = timeout_s

    def _ask(self, model_id: str, description: str, labels: list[str], task: str, task_labels: list[str]) -> dict:
        prompt = (
            f"A text classifier ({model_id}: {description}) outputs these labels: {json.dumps(labels)}.\n"
            f"The annotation task is: {task}\nTask labels: {json.dumps(task_labels)}.\n"
            "For each classifier label, give the task label with the same meaning, or null if none has it. "
            'Answer only with a JSON object {"<classifier label>": "<task label>" or null}.'
        )
        body = {
            "model": self.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": "You map label names between classifiers. Answer with JSON only."},
                {"role": "user", "content": prompt},
            ],
        }
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(body).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        if self._api_key:
            request.add_header("Authorization", f"Bearer {self._api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                doc = json.loads(response.read())
            content = doc["choices"][0]["message"]["content"]
            answer = json.loads(content)
        except urllib.error.HTTPError as exc:
            raise ProposalError(f"{self.base_url}/chat/completions answered HTTP {exc.code}: {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ProposalError(f"{self.base_url}/chat/completions cannot be reached: {exc}") from None
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ProposalError(f"the LLM's label mapping is not the JSON asked for: {exc!r}") from None
        if not isinstance(answer, dict):
            raise ProposalError(f"the LLM's label mapping is not a JSON object: {answer!r}")
        return answer

    def complete(self, mapping: LabelMapping, model_id: str, description: str, task: str) -> LabelMapping:
        """``mapping`` with its unmapped labels filled in where the LLM names a valid task label."""
        missing = [e.model_label for e in mapping.unmapped]
        if not missing:
            return mapping
        answer = self._ask(model_id, description, missing, task, mapping.task_labels)
        entries = []
        for entry in mapping.entries:
            proposed = answer.get(entry.model_label) if entry.task_label is None else None
            if entry.task_label is not None:
                entries.append(entry)
            elif isinstance(proposed, str) and proposed in mapping.task_labels:
                entries.append(MappedLabel(entry.model_label, proposed, "llm"))
            elif proposed is None:
                entries.append(MappedLabel(entry.model_label, None, "unmapped", f"{entry.reason}; the LLM had none"))
            else:
                reason = f"{entry.reason}; the LLM proposed {proposed!r}, not a task label"
                entries.append(MappedLabel(entry.model_label, None, "unmapped", reason))
        return LabelMapping(entries, mapping.task_labels, mapping.labels_unknown)
