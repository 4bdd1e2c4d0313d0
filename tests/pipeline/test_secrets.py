"""Secrets stay secret: the LLM API key never shows in logs, metrics, errors or topics; Kafka security via config.

Related checks elsewhere: the review page's token and its rate limit on failed attempts
(tests/reviewer/test_human.py: ``test_api_without_the_token_is_401``,
``test_repeated_bad_tokens_are_rate_limited_even_for_the_right_token_afterwards``,
``test_human_mode_without_the_token_variable_is_a_config_error``); the chart's non-root,
read-only-root-FS containers and Secret references (tests/deploy/test_chart.py:
``test_every_container_runs_non_root_with_read_only_root_fs_and_probes``,
``test_secrets_come_from_secret_refs_never_from_values``).
"""

from __future__ import annotations

import re

import pytest
from autoannotator.config import parse_config
from autoannotator.exceptions import ConfigError
from autoannotator.stream.kafka import client_settings, make_consumer, make_producer
from autoannotator.stream.reader import TopicReader
from autoannotator.wire import TOPICS

from tests.helpers.pipeline import (
    PipelineRun,
    gold_for,
    json_items,
    make_texts,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

FAKE_KEY = "sk-fake-9f8e7d6c5b4a39281706f5e4d3c2b1a0-DO-NOT-LEAK"
KAFKA_PASSWORD = "kafka-pw-3b9c1e7a-DO-NOT-LEAK"


def _config(**security):
    return parse_config({"task": {"labels": ["a", "b"]}, "kafka": {"security": security}})


def test_sasl_ssl_settings_pass_through_to_librdkafka_with_the_password_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_PW", KAFKA_PASSWORD)
    config = _config(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="annotator",
                     sasl_password_env="KAFKA_PW", ssl_ca_location="/etc/kafka/ca.pem",
                     ssl_certificate_location="/etc/kafka/client.pem", ssl_key_location="/etc/kafka/client.key")
    settings = client_settings(config.kafka, "broker:9093")
    assert {k: settings[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password",
                                     "ssl.ca.location", "ssl.certificate.location", "ssl.key.location")} == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "annotator",
        "sasl.password": KAFKA_PASSWORD, "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.certificate.location": "/etc/kafka/client.pem", "ssl.key.location": "/etc/kafka/client.key"}


def test_consumers_and_producers_carry_the_security_settings(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_PW", KAFKA_PASSWORD)
    config = _config(protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u", sasl_password_env="KAFKA_PW")
    # librdkafka accepts the properties (it would raise on an unknown or ill-typed one).
    make_consumer(config.kafka, "127.0.0.1:1", "g").close()
    make_producer(config.kafka, "127.0.0.1:1").flush(0)


def test_a_missing_password_variable_is_a_config_error_naming_the_field(monkeypatch) -> None:
    monkeypatch.delenv("KAFKA_PW_UNSET", raising=False)
    config = _config(protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u", sasl_password_env="KAFKA_PW_UNSET")
    with pytest.raises(ConfigError, match=r"kafka\.security\.sasl_password_env.*KAFKA_PW_UNSET"):
        client_settings(config.kafka, "broker:9093")


def test_a_password_written_into_the_config_file_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.security\.sasl_password") as err:
        _config(protocol="SASL_SSL", sasl_password=KAFKA_PASSWORD)
    assert KAFKA_PASSWORD not in str(err.value)


def test_an_api_key_written_into_the_config_file_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"reviewer\.llm\.api_key") as err:
        parse_config({"task": {"labels": ["a", "b"]}, "reviewer": {"llm": {"api_key": FAKE_KEY}}})
    assert FAKE_KEY not in str(err.value)


def test_the_api_key_never_appears_in_logs_metrics_or_topics_even_when_the_llm_echoes_it(
        make_config, kafka_bootstrap, tmp_path, tiny_artifact, second_artifact):
    texts = make_texts(24, prefix="k")
    run = PipelineRun(make_config, kafka_bootstrap, tmp_path, {"s1": tiny_artifact, "s2": second_artifact},
                      gold=gold_for(texts), env={"AUTOANNOTATOR_LLM_API_KEY": FAKE_KEY}, log_level="DEBUG",
                      # The endpoint first expects another key and, like the real API, echoes the one it got.
                      mock_options={"api_key": "sk-the-right-one"})
    with run:
        watcher = run.watcher()
        try:
            run.send(json_items(texts))
            # Refused requests (401 with the key echoed) open the reviewer's circuit breaker.
            wait_until(lambda: "circuit open" in run.logs(), 120, "requests refused for the wrong key")
            run.mock.api_key = FAKE_KEY
            watcher.wait_for(texts, 150)
        finally:
            watcher.close()
        pages = run.metrics_pages()
    logs = run.logs()
    assert re.search(r'autoannotator_llm_requests_total{status="auth_error"} [1-9]', "".join(pages.values()))
    assert "circuit open" in logs  # the refusals, with the echoed key, did happen and were logged about
    assert len(pages) >= 3 and all("autoannotator_" in page for page in pages.values())
    assert FAKE_KEY not in logs
    for url, page in pages.items():
        assert FAKE_KEY not in page, f"the API key is on {url}"
    for topic in TOPICS:
        with TopicReader(run.config.kafka, kafka_bootstrap, topic) as reader:
            for msg in reader.drain(3):
                assert FAKE_KEY.encode() not in (msg.value or b""), f"the API key is in a {topic} message"
    assert FAKE_KEY not in (tmp_path / "pipeline.yaml").read_text()
