"""Summaries of a run against gold labels, and the chart of accuracy and LLM-call rate over the stream."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoannotator.config import LLMPrice
from autoannotator.demo.tracker import RecordOutcome, metric_sum


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


@dataclass(frozen=True, slots=True)
class Window:
    """One window of the stream, in production order."""

    end: int
    records: int
    llm_share: float
    accuracy: float
    cost_usd: float


def windows(order: Sequence[str], outcomes: Mapping[str, RecordOutcome], gold: Mapping[str, str],
            window: int) -> list[Window]:
    """LLM share (reviewed records, audits included), final-label accuracy and LLM cost per window."""
    rows = []
    for start in range(0, len(order), window):
        ids = [rid for rid in order[start:start + window] if rid in outcomes]
        if not ids:
            continue
        labelled = [rid for rid in ids if outcomes[rid].label is not None]
        rows.append(Window(
            end=start + len(order[start:start + window]), records=len(ids),
            llm_share=sum(outcomes[rid].source in ("llm", "human") for rid in ids) / len(ids),
            accuracy=accuracy([(outcomes[rid].label, gold[rid]) for rid in labelled if rid in gold]),
            cost_usd=sum(outcomes[rid].cost_usd for rid in ids),
        ))
    return rows


def share_of(order: Sequence[str], outcomes: Mapping[str, RecordOutcome]) -> float:
    """LLM share of the decided records among ``order``."""
    ids = [rid for rid in order if rid in outcomes]
    return sum(outcomes[rid].source in ("llm", "human") for rid in ids) / len(ids) if ids else float("nan")


def all_llm_cost_per_record(outcomes: Mapping[str, RecordOutcome]) -> float:
    """Mean LLM cost of a reviewed record: what sending every record to the LLM would cost per record."""
    costs = [o.cost_usd for o in outcomes.values() if o.source == "llm"]
    return sum(costs) / len(costs) if costs else 0.0


def chart(
    order: Sequence[str],
    outcomes: Mapping[str, RecordOutcome],
    gold: Mapping[str, str],
    rounds_at: Sequence[int],
    path: Path,
    window: int = 100,
    title: str = "AutoAnnotator on a stream of tweets",
) -> Path:
    """PNG over the records streamed: LLM share and accuracy per window (top), cumulative LLM cost against
    sending every record to the LLM (bottom); new specialist versions as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = windows(order, outcomes, gold, window)
    xs = [r.end for r in rows]
    per_record = all_llm_cost_per_record(outcomes)
    decided = [rid for rid in order if rid in outcomes]
    cumulative, total = [], 0.0
    for rid in decided:
        total += outcomes[rid].cost_usd
        cumulative.append(total)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), dpi=110, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    top.plot(xs, [r.accuracy for r in rows], marker="o", label="accuracy of final labels")
    top.plot(xs, [r.llm_share for r in rows], marker="s", label="share sent to the LLM (audit included)")
    bottom.plot(range(1, len(cumulative) + 1), cumulative, label="LLM cost, AutoAnnotator")
    bottom.plot([1, len(decided)], [per_record, per_record * len(decided)], linestyle=":",
                label="LLM cost, every record to the LLM (est.)")
    for ax in (top, bottom):
        for i, at in enumerate(rounds_at):
            ax.axvline(at, color="grey", linestyle="--", linewidth=1,
                       label="new specialist version(s)" if i == 0 else None)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    top.set_ylim(0, 1)
    top.set_title(title)
    bottom.set_ylabel("USD (cumulative)")
    bottom.set_xlabel("records streamed")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass(frozen=True, slots=True)
class ErrorBound:
    """Error-bounded routing at the end of a run: what was promised, what the voter certified, what held."""

    target_error: float
    # The voter's current upper confidence bound on accepted-label error and its threshold (for the
    # version set of the most recently decided record); the bound is 1.0 while none is certified.
    upper_bound: float
    threshold: float
    audit_window: int
    # Labels accepted without review (consensus) and how many of them disagree with gold.
    accepted: int
    accepted_wrong: int

    @property
    def measured_error(self) -> float:
        """Error of the accepted labels against gold (nan when none was accepted)."""
        return self.accepted_wrong / self.accepted if self.accepted else float("nan")

    def line(self) -> str:
        """The summary line."""
        measured = (f"measured error of the {self.accepted} labels accepted without review, against gold: "
                    f"{self.measured_error:.1%} ({self.accepted_wrong} wrong)" if self.accepted else
                    "no label accepted without review (no threshold certified: every record went to review)")
        return (f"error-bounded routing: target error {self.target_error:.1%}; current upper bound "
                f"{self.upper_bound:.1%} (threshold {self.threshold:.2f}, {self.audit_window} audit outcomes in the "
                f"window); {measured}")


def error_bound(voter_metrics: Mapping[str, float], target_error: float, outcomes: Mapping[str, RecordOutcome],
                gold: Mapping[str, str]) -> ErrorBound:
    """The voter's reported bound (from its /metrics) beside the measured error of the consensus labels."""
    accepted = [rid for rid, o in outcomes.items() if o.source == "consensus" and rid in gold]
    wrong = sum(outcomes[rid].label != gold[rid] for rid in accepted)
    return ErrorBound(target_error, metric_sum(voter_metrics, "autoannotator_voter_error_upper_bound"),
                      metric_sum(voter_metrics, "autoannotator_voter_threshold"),
                      int(metric_sum(voter_metrics, "autoannotator_voter_audit_window")), len(accepted), wrong)
