"""The pipeline config: validated once, errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from autoannotator.config import dump_config, load_config, parse_config
from autoannotator.exceptions import ConfigError

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"task": {"labels": ["a", "b"]}}


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")))
def test_shipped_examples_are_valid(path):
    assert load_config(path).task.labels


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"task": {"labels": ["a"]}}, "task.labels"),
        ({"task": {"labels": ["a", "A"]}}, "task.labels"),
        ({**MINIMAL, "voter": {"eps": 1.5}}, "voter.eps"),
        ({**MINIMAL, "voter": {"policy": "majority"}}, "voter.policy"),
        ({**MINIMAL, "kafka": {"partitions": 0}}, "kafka.partitions"),
        ({**MINIMAL, "kafka": {"partitons": 3}}, "kafka.partitons"),
        ({**MINIMAL, "specialists": [{"name": "ok"}, {"name": "Bad Name"}]}, "specialists.1.name"),
        ({**MINIMAL, "reviewer": {"llm": {"batch_size": 0}}}, "reviewer.llm.batch_size"),
        ({**MINIMAL, "input": {"format": "xml"}}, "input.format"),
        ({**MINIMAL, "voter": {"target_error": 0}}, "voter.target_error"),
        ({**MINIMAL, "voter": {"target_error": 1.0}}, "voter.target_error"),
        ({**MINIMAL, "voter": {"audit_rate": -0.01}}, "voter.audit_rate"),
        ({**MINIMAL, "voter": {"audit_rate": 1.5}}, "voter.audit_rate"),
        ({**MINIMAL, "voter": {"temperatures": {"s1": 1.3}}}, "voter.temperatures"),
    ],
)
def test_a_wrong_field_is_named(doc, field):
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert field in str(info.value)


def test_cross_field_errors_name_the_section():
    doc = {**MINIMAL, "specialists": [{"name": "s1", "label_map": {"POS": "positive"}}]}
    with pytest.raises(ConfigError, match=r"specialists\.0\.label_map"):
        parse_config(doc)
    with pytest.raises(ConfigError, match=r"voter\.quorum"):
        parse_config({**MINIMAL, "specialists": [{"name": "s1"}], "voter": {"quorum": 2}})


def test_unreadable_and_non_yaml_files_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_bootstrap_comes_from_the_environment_first(monkeypatch):
    config = parse_config({**MINIMAL, "kafka": {"bootstrap_servers": "file:9092"}})
    assert config.bootstrap_servers() == "file:9092"
    monkeypatch.setenv("AUTOANNOTATOR_KAFKA_BOOTSTRAP", "env:9092")
    assert config.bootstrap_servers() == "env:9092"


def test_dumped_config_loads_back_equal(tmp_path):
    config = load_config(REPO / "examples/pipeline.yaml")
    path = tmp_path / "again.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config
