"""Summaries of a run against gold labels, and the chart of accuracy and LLM-call rate over the stream."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoannotator.config import LLMPrice
from autoannotator.demo.tracker import RecordOutcome


@dataclass
class MethodRow:
    """One line of the comparison table."""

    method: str
    accuracy: float
    llm_calls: int
    tokens: int
    cost_usd: float
    note: str = ""


@dataclass
class RunSummary:
    """What a run achieved, measured against gold labels."""

    records: int
    decided: int
    wall_s: float
    stream_s: float
    accuracy: float
    accepted: int
    reviewed: int
    rejected: int
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    price_model: str
    versions_released: int
    rows: list[MethodRow] = field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        """Records decided per second of streaming (training pauses excluded)."""
        return self.decided / self.stream_s if self.stream_s else 0.0

    def to_json(self) -> dict:
        """JSON-ready form."""
        doc = asdict(self)
        doc["records_per_s"] = self.records_per_s
        return doc


def price(tokens_in: int, tokens_out: int, model_price: LLMPrice | None) -> float:
    """USD for the tokens at a model's price (0 when no price is known)."""
    if model_price is None:
        return 0.0
    return tokens_in / 1e6 * model_price.input_per_mtok + tokens_out / 1e6 * model_price.output_per_mtok


def accuracy(pairs: Sequence[tuple[str | None, str]]) -> float:
    """Share of (predicted, gold) pairs that agree; predicted None counts as wrong."""
    return sum(p == g for p, g in pairs) / len(pairs) if pairs else float("nan")


def specialist_rows(predictions: Mapping[str, Mapping[str, str]], gold: Mapping[str, str]) -> list[MethodRow]:
    """Each specialist alone: its argmax label for every record it predicted."""
    names = sorted({name for votes in predictions.values() for name in votes})
    rows = []
    for name in names:
        pairs = [(votes[name], gold[rid]) for rid, votes in predictions.items() if name in votes and rid in gold]
        rows.append(MethodRow(f"specialist {name} alone", accuracy(pairs), 0, 0, 0.0, f"{len(pairs)} records"))
    return rows


def summarise(
    outcomes: Mapping[str, RecordOutcome],
    gold: Mapping[str, str],
    predictions: Mapping[str, Mapping[str, str]],
    *,
    wall_s: float,
    stream_s: float,
    llm_calls: int,
    batch_size: int,
    price_model: str,
    model_price: LLMPrice | None,
    versions_released: int,
) -> RunSummary:
    """Compare the run with each specialist alone and with labelling everything by the LLM."""
    ids = [rid for rid in gold if rid in outcomes]
    sources = Counter(outcomes[rid].source for rid in ids)
    prompt = sum(outcomes[rid].prompt_tokens for rid in ids)
    completion = sum(outcomes[rid].completion_tokens for rid in ids)
    reviewed = sources["llm"] + sources["human"]
    summary = RunSummary(
        records=len(gold), decided=len(ids), wall_s=wall_s, stream_s=stream_s,
        accuracy=accuracy([(outcomes[rid].label, gold[rid]) for rid in ids if outcomes[rid].label is not None]),
        accepted=sources["consensus"], reviewed=reviewed, rejected=sources["rejected"], llm_calls=llm_calls,
        prompt_tokens=prompt, completion_tokens=completion, cost_usd=price(prompt, completion, model_price),
        price_model=price_model, versions_released=versions_released,
    )
    summary.rows.append(MethodRow("AutoAnnotator", summary.accuracy, llm_calls, prompt + completion,
                                  summary.cost_usd, f"{reviewed} of {len(ids)} records reviewed"))
    summary.rows.extend(specialist_rows(predictions, gold))
    if reviewed:
        llm_pairs = [(outcomes[rid].label, gold[rid]) for rid in ids if outcomes[rid].source in ("llm", "human")]
        per_in, per_out = prompt / reviewed, completion / reviewed
        n = len(ids)
        summary.rows.append(MethodRow(
            "LLM alone (estimated)", accuracy(llm_pairs), -(-n // batch_size), round((per_in + per_out) * n),
            price(round(per_in * n), round(per_out * n), model_price),
            "the reviewer's accuracy and tokens per record on the hard records, scaled to all records",
        ))
    return summary


def format_summary(summary: RunSummary, simulated: str | None) -> str:
    """The table printed at the end of a run."""
    lines = [
        "",
        f"records {summary.records}, decided {summary.decided} in {summary.wall_s:.0f}s "
        f"({summary.records_per_s:.1f} records/s while streaming)",
        f"accepted by consensus {summary.accepted} ({summary.accepted / max(1, summary.decided):.1%}), "
        f"reviewed {summary.reviewed} ({summary.reviewed / max(1, summary.decided):.1%}), "
        f"rejected {summary.rejected}",
        f"LLM: {summary.llm_calls} calls, {summary.prompt_tokens} prompt + {summary.completion_tokens} completion "
        f"tokens, ${summary.cost_usd:.4f} at {summary.price_model} prices; new model versions released: "
        f"{summary.versions_released}",
    ]
    if simulated:
        lines.append(f"reviewer: {simulated}")
    lines += ["", f"{'method':<34}{'accuracy':>9}{'LLM calls':>11}{'tokens':>10}{'USD':>10}  note"]
    for row in summary.rows:
        lines.append(f"{row.method:<34}{row.accuracy:>9.3f}{row.llm_calls:>11}{row.tokens:>10}"
                     f"{row.cost_usd:>10.4f}  {row.note}")
    return "\n".join(lines)


def chart(
    order: Sequence[str],
    outcomes: Mapping[str, RecordOutcome],
    gold: Mapping[str, str],
    rounds_at: Sequence[int],
    path: Path,
    window: int = 100,
    title: str = "AutoAnnotator on a stream of tweets",
) -> Path:
    """PNG: accuracy and LLM-call rate per window of the stream, training rounds as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, acc, calls = [], [], []
    for start in range(0, len(order), window):
        ids = [rid for rid in order[start:start + window] if rid in outcomes]
        if not ids:
            continue
        labelled = [rid for rid in ids if outcomes[rid].label is not None]
        xs.append(start + len(order[start:start + window]))
        acc.append(accuracy([(outcomes[rid].label, gold[rid]) for rid in labelled]))
        calls.append(sum(outcomes[rid].source in ("llm", "human") for rid in ids) / len(ids))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(xs, acc, marker="o", label="accuracy of final labels")
    ax.plot(xs, calls, marker="s", label="share sent to the LLM")
    for i, at in enumerate(rounds_at):
        ax.axvline(at, color="grey", linestyle="--", linewidth=1, label="new specialist versions" if i == 0 else None)
    ax.set_xlabel("records streamed")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
