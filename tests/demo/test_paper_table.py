"""The paper table's logic on synthetic predictions (bench/paper_table.py runs it on real data).

The specialists' probabilities are made up here, so each test knows which records the
specialists agree on; the LLM is the offline simulation of mock-llm, checked once against the
real mock-llm server.
"""

from __future__ import annotations

import json
import math
import random
import urllib.request

import numpy as np
import pytest
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.demo.datasets import Example
from autoannotator.demo.paper import (
    PaperError,
    PaperRow,
    Probabilities,
    SimulatedLLM,
    calibrate_soft,
    llm_alone_row,
    markdown,
    route_vote,
    soft_row,
    specialist_rows,
    split,
    vote_row,
)
from autoannotator.demo.report import price
from autoannotator.mockllm.server import Gold, MockLLM
from autoannotator.reviewer.prompt import PromptRecord

LABELS = ["negative", "neutral", "positive"]
NAMES = ["a", "b", "c"]


def config(batch_size: int = 4, model: str = "gpt-3.5-turbo") -> PipelineConfig:
    """A pipeline config with a task, a batch size and a price table (no broker needed)."""
    return parse_config({
        "task": {"name": "sentiment", "description": "Sentiment of tweets.", "labels": LABELS},
        "specialists": [{"name": n} for n in NAMES],
        "reviewer": {"llm": {"model": model, "batch_size": batch_size, "concurrency": 2,
                             "prices": {"gpt-3.5-turbo": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}}}},
    })


def examples(n: int, seed: int = 0) -> list[Example]:
    """``n`` labelled records with texts of varying length."""
    rng = random.Random(seed)
    return [Example(f"r{i:04d}", " ".join(["word"] * rng.randint(3, 30)) + f" {i}", rng.choice(LABELS), "synthetic")
            for i in range(n)]


def one_hot(index: int, strength: float = 0.9) -> list[float]:
    """A probability vector leaning ``strength`` on one label."""
    rest = (1 - strength) / (len(LABELS) - 1)
    return [strength if i == index else rest for i in range(len(LABELS))]


def probabilities(records: list[Example], agree: set[int], two_of_three: set[int] = frozenset()) -> Probabilities:
    """All three right on ``agree``; two right on ``two_of_three``; all three different elsewhere."""
    by_name: dict[str, list[list[float]]] = {n: [] for n in NAMES}
    for i, e in enumerate(records):
        gold = LABELS.index(e.label)
        if i in agree:
            picks = [gold, gold, gold]
        elif i in two_of_three:
            picks = [gold, gold, (gold + 1) % 3]
        else:
            picks = [gold, (gold + 1) % 3, (gold + 2) % 3]
        for name, pick in zip(NAMES, picks, strict=True):
            by_name[name].append(one_hot(pick))
    return Probabilities(NAMES, {n: np.asarray(v) for n, v in by_name.items()}, {n: 0.1 for n in NAMES})


def gold(records: list[Example]) -> dict[str, str]:
    """Record id -> gold label."""
    return {e.id: e.label for e in records}


def test_split_draws_calibration_and_test_from_records_never_in_the_training_part() -> None:
    records = examples(400)
    small = split(records, calibration=20, test=30, seed=1, heldout_share=0.3)
    large = split(records, calibration=50, test=60, seed=2, heldout_share=0.3)
    train_ids = {e.id for e in small.train}
    assert not train_ids & {e.id for e in small.calibration + small.test}
    assert not {e.id for e in small.calibration} & {e.id for e in small.test}
    assert train_ids == {e.id for e in large.train}  # sizes and seed never move a record into training


def test_split_refuses_more_held_out_records_than_exist() -> None:
    with pytest.raises(PaperError, match="exceed"):
        split(examples(50), calibration=40, test=40, seed=0, heldout_share=0.3)


def test_simulated_llm_gives_the_answers_and_token_counts_of_the_mock_llm_server() -> None:
    records = examples(7)
    cfg = config(batch_size=7)
    llm = SimulatedLLM(cfg, gold(records), accuracy=0.6)
    review = llm.review([PromptRecord(e.id, e.text) for e in records])
    table = Gold(labels=list(LABELS))
    for e in records:
        table.add(e.label, record_id=e.id)
    server = MockLLM(table, labels=LABELS, accuracy=0.6)
    url = server.start_in_thread()
    try:
        messages = llm.builder.messages([PromptRecord(e.id, e.text) for e in records])
        body = {"model": "gpt-3.5-turbo", "messages": messages, "response_format": {"type": "json_object"}}
        request = urllib.request.Request(f"{url}/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    finally:
        server.stop_thread()
    labels = {a["id"]: a["label"] for a in json.loads(answer["choices"][0]["message"]["content"])["labels"]}
    assert review.labels == labels
    assert (review.prompt_tokens, review.completion_tokens) == (
        answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"])
    assert review.calls == 1


def test_llm_alone_reviews_every_record_in_batches_at_the_configured_price() -> None:
    records = examples(10)
    cfg = config(batch_size=4)
    llm = SimulatedLLM(cfg, gold(records), accuracy=1.0)
    row = llm_alone_row("synthetic", records, llm, latency_ms=100)
    assert row.llm_calls == math.ceil(len(records) / 4)
    assert row.accuracy == 1.0
    assert row.call_rate == 1.0
    assert row.cost_usd == pytest.approx(price(row.prompt_tokens, row.completion_tokens,
                                               cfg.reviewer.llm.prices["gpt-3.5-turbo"]))
    assert row.wall_s == pytest.approx(math.ceil(row.llm_calls / 2) * 0.1)  # concurrency 2


def test_llm_without_a_price_for_its_model_is_refused_naming_the_field() -> None:
    with pytest.raises(PaperError, match=r"reviewer\.llm\.prices"):
        SimulatedLLM(config(model="unpriced-model"), {}, accuracy=1.0)


def test_specialist_alone_is_scored_on_its_argmax() -> None:
    records = examples(30)
    probs = probabilities(records, agree=set(range(10)))
    rows = {r.method: r for r in specialist_rows("synthetic", records, probs, LABELS)}
    assert rows["slm:a"].accuracy == 1.0  # always right by construction
    assert rows["slm:b"].accuracy == pytest.approx(10 / 30)  # right only where all agree
    assert rows["slm:a"].llm_calls == 0


def test_unanimous_vote_keeps_agreed_labels_and_sends_every_other_record_to_the_llm() -> None:
    records = examples(40)
    agree = set(range(0, 40, 3))
    probs = probabilities(records, agree, two_of_three=set(range(1, 40, 3)))
    llm = SimulatedLLM(config(batch_size=5), gold(records), accuracy=1.0)
    row = vote_row("synthetic", records, probs, LABELS, llm, eps=0.3, latency_ms=0)
    hard = len(records) - len(agree)
    assert row.call_rate == pytest.approx(hard / len(records))
    assert row.llm_calls == math.ceil(hard / 5)
    assert row.accuracy == 1.0  # consensus right by construction, the rest answered by a perfect LLM


def test_majority_vote_accepts_two_of_three_and_reviews_only_three_way_splits() -> None:
    records = examples(40)
    agree, two = set(range(0, 40, 3)), set(range(1, 40, 3))
    probs = probabilities(records, agree, two_of_three=two)
    chosen, accepted = route_vote(probs, len(records), eps=0.5)
    assert [i for i, ok in enumerate(accepted) if ok] == sorted(agree | two)
    assert all(LABELS[chosen[i]] == records[i].label for i in agree | two)


def test_soft_routing_is_solved_on_the_calibration_split_for_the_vote_call_rate() -> None:
    rng = np.random.default_rng(0)
    records = examples(600, seed=3)
    cal, test = records[:300], records[300:]

    def noisy(part: list[Example]) -> Probabilities:
        by_name = {}
        for name in NAMES:
            logits = rng.normal(0, 1.0, (len(part), 3))
            logits[np.arange(len(part)), [LABELS.index(e.label) for e in part]] += 1.2
            exp = np.exp(logits * 2.0)  # over-confident: calibration should cool it down
            by_name[name] = exp / exp.sum(axis=1, keepdims=True)
        return Probabilities(NAMES, by_name, {n: 0.0 for n in NAMES})

    cal_probs, test_probs = noisy(cal), noisy(test)
    _, cal_accepted = route_vote(cal_probs, len(cal), eps=0.3)
    target = 1 - sum(cal_accepted) / len(cal)
    calibration = calibrate_soft(cal, cal_probs, LABELS, target)
    assert calibration.calibration_call_rate == pytest.approx(target, abs=2 / len(cal))
    assert all(t > 1.0 for t in calibration.temperatures.values())
    llm = SimulatedLLM(config(), gold(records), accuracy=1.0)
    row = soft_row("synthetic", test, test_probs, LABELS, llm, calibration, latency_ms=0)
    assert row.call_rate == pytest.approx(target, abs=0.08)  # same distribution, so a similar rate


def test_probabilities_that_do_not_match_the_records_are_refused() -> None:
    records = examples(10)
    probs = probabilities(records[:9], agree=set())
    with pytest.raises(PaperError, match="shape"):
        specialist_rows("synthetic", records, probs, LABELS)


def test_table_has_a_line_and_a_result_line_per_method_with_savings_against_the_llm() -> None:
    rows = [
        PaperRow("d", "llm", "LLM alone", 0.9, 10, 800, 200, 0.01, 2.0, 1.0, 100),
        PaperRow("d", "vote", "AutoAnnotator vote", 0.85, 4, 300, 100, 0.004, 1.0, 0.4, 100),
    ]
    table = markdown(rows, "header")
    assert "| LLM alone | 0.900 | 100.0% | 10 | 1000 | - |" in table
    assert "| AutoAnnotator vote | 0.850 | 40.0% | 4 | 400 | 60% |" in table
    line = rows[1].result_line()
    fields = dict(part.split("=", 1) for part in line.split()[2:])
    assert line.startswith("RESULT paper ")
    assert fields["dataset"] == "d" and fields["method"] == "vote" and fields["tokens"] == "400"
    assert float(fields["accuracy"]) == 0.85 and int(fields["llm_calls"]) == 4
