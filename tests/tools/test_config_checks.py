"""``check-config`` warns about routing that cannot route and unpriced LLMs; ``plan`` writes a config that works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from autoannotator.cli import main
from autoannotator.config import load_config, parse_config
from autoannotator.planner import embed
from autoannotator.tools.configcheck import config_warnings, routing_warnings, vote_reaches_review


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def specialists(k: int) -> list[dict[str, str]]:
    return [{"name": f"s{i}"} for i in range(k)]


@pytest.mark.parametrize(
    ("k", "labels", "eps", "expected"),
    [
        (1, 2, 0.34, (False, False)),  # one voter is always unanimous
        (3, 2, 0.34, (False, False)),  # 2-to-1 has U = 0.33 < 0.34
        (3, 2, 0.3, (True, False)),  # 2-to-1 now reaches review
        (3, 3, 0.34, (True, False)),  # a three-way split is a tie
        (2, 2, 0.9, (True, False)),  # 1-1 is a tie
    ],
)
def test_vote_rule_reach_follows_from_k_labels_and_eps(k: int, labels: int, eps: float,
                                                       expected: tuple[bool, bool]) -> None:
    assert vote_reaches_review(k, labels, eps) == expected


@pytest.mark.parametrize("k", [1, 3])
def test_check_config_warns_on_a_vote_config_that_can_never_route(tmp_path: Path, capsys: Any, k: int) -> None:
    path = write(tmp_path / "p.yaml", {"task": {"labels": ["ok", "toxic"]}, "specialists": specialists(k),
                                       "voter": {"policy": "vote", "eps": 0.34, "quorum": 1}})
    assert main(["check-config", "--config", str(path), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: voter: policy vote" in err and "never sends a record to review" in err


def test_check_config_warns_when_soft_tau_can_never_or_always_route(tmp_path: Path) -> None:
    base = {"task": {"labels": ["a", "b", "c"]}, "specialists": specialists(3),
            "reviewer": {"llm": {"prices": {"gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1}}}}}
    never = config_warnings(parse_config({**base, "voter": {"policy": "soft", "tau": 0.3}}))
    always = config_warnings(parse_config({**base, "voter": {"policy": "soft", "tau": 1.0}}))
    fine = config_warnings(parse_config({**base, "voter": {"policy": "soft", "tau": 0.8}}))
    assert len(never) == 1 and "nothing reaches review" in never[0]
    assert len(always) == 1 and "every record goes to review" in always[0]
    assert fine == []


def test_check_config_warns_when_the_audit_sample_is_all_that_a_vote_config_reviews(tmp_path: Path) -> None:
    config = parse_config({"task": {"labels": ["ok", "toxic"]}, "specialists": specialists(1),
                           "voter": {"policy": "vote", "audit_rate": 0.03, "quorum": 1}})
    [warning] = routing_warnings(config)
    assert "never sends a record to review beyond the audit sample (audit_rate 0.03)" in warning


@pytest.mark.parametrize(("k", "labels"), [(1, 2), (3, 2), (3, 3)])
def test_error_bounded_routing_can_always_route_for_any_k_and_label_count(k: int, labels: int) -> None:
    config = parse_config({"task": {"labels": [f"l{i}" for i in range(labels)]}, "specialists": specialists(k),
                           "voter": {"policy": "error-bounded", "target_error": 0.05, "quorum": 1}})
    assert routing_warnings(config) == []


@pytest.mark.parametrize(
    ("voter", "says"),
    [
        ({"min_audit_samples": 500, "audit_window": 100}, "min_audit_samples 500 > audit_window 100"),
        ({"target_error": 0.001, "audit_window": 2000}, "target_error 0.001 is below the best bound"),
        ({"audit_rate": 1.0}, "audit_rate 1.0 sends every record to review"),
    ],
)
def test_check_config_warns_when_error_bounded_can_never_certify_a_threshold(voter: dict[str, Any], says: str) -> None:
    config = parse_config({"task": {"labels": ["a", "b"]}, "specialists": specialists(3),
                           "voter": {"policy": "error-bounded", **voter}})
    [warning] = routing_warnings(config)
    assert says in warning and "review" in warning


def test_check_config_flags_a_reviewer_model_without_a_price(tmp_path: Path) -> None:
    config = parse_config({"task": {"labels": ["a", "b"]}, "specialists": specialists(3),
                           "voter": {"policy": "soft", "tau": 0.8},
                           "reviewer": {"llm": {"model": "my-local-llama"}}})
    [warning] = config_warnings(config)
    assert "no price for model 'my-local-llama'" in warning


def test_plan_own_writes_a_config_that_routes_with_prices_and_offline_next_steps(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "pipeline.yaml"
    rc = main(["plan", "--own", "--task", "Is this comment an insult?", "--labels", "ok,insult", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    config = load_config(out)
    # The names `train` gives by default, with no model yet: `train` builds them, or a cold start does.
    assert [s.name for s in config.specialists] == ["minilm-1", "minilm-2", "minilm-3"]
    assert config.voter.policy == "error-bounded" and config.voter.target_error == 0.05
    assert config.voter.quorum == 2 and config_warnings(config) == []
    assert config.reviewer.llm.prices[config.reviewer.llm.model].output_per_mtok > 0
    steps = printed.split("next steps:", 1)[1].splitlines()
    assert "autoannotator train --config" in steps[1]
    assert "autoannotator up --config" in steps[-1] and "cold start" in steps[-1]
    assert "huggingface-cli" not in "".join(steps)


def test_plan_offers_the_hub_download_only_when_the_hub_is_reachable(tmp_path: Path, capsys: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The catalog's embeddings stay out of the process-wide memo (the planner tests check the disk cache).
    monkeypatch.setattr(embed, "_memory", {})
    out = tmp_path / "pipeline.yaml"
    rc = main(["plan", "--task", "Sentiment of tweets about airlines", "--labels", "negative,neutral,positive",
               "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "huggingface-cli" not in printed and "Hub is not reachable" in printed
    config = load_config(out)
    assert config.voter.policy == "error-bounded" and config_warnings(config) == []
