"""The operator commands: check-config, produce, tail, broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from autoannotator.cli import main
from autoannotator.stream.broker import wait_for_broker
from autoannotator.wire import TextRecord, decode_text_record

from tests.helpers.kafka import collect

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoannotator.cli", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO,
    )


def write(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def test_help_lists_the_commands():
    result = cli("--help")
    assert result.returncode == 0
    for command in ("broker", "produce", "tail", "up", "check-config"):
        assert command in result.stdout


def test_check_config_names_the_bad_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: {labels: [a, b]}\nvoter: {tau: 2}\n")
    result = cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert "voter.tau" in result.stderr


def test_produce_jsonl_then_tail_texts(make_config, kafka_bootstrap, tmp_path):
    config = make_config(input={"format": "json"})
    cfg = write(config, tmp_path / "p.yaml")
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in [
        {"id": "a1", "text": "first", "source": "x"},
        {"text": "no id here"},
        {"id": 7, "text": "numeric id"},
    ]) + "\n")
    assert main(["produce", str(data), "--config", str(cfg), "--no-progress"]) == 0
    got = collect(config, kafka_bootstrap, "texts", 3, timeout_s=30)
    records = {m.record_id: decode_text_record(m, "json", 1000) for m in got}
    assert set(records) == {"a1", "in:2", "7"}
    assert records["a1"].meta["source"] == "x"
    result = cli("tail", "texts", "--config", str(cfg), "--max", "3")
    # texts in JSON format are not protobuf: tail shows them as undecodable rather than dying
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3 and result.returncode == 0


def test_produce_csv_as_protobuf_and_tail_decodes(make_config, kafka_bootstrap, tmp_path):
    config = make_config()
    cfg = write(config, tmp_path / "p.yaml")
    data = tmp_path / "tweets.csv"
    data.write_text("id,text,label\nt1,\"hello, world\",positive\nt2,bye,negative\n")
    assert main(["produce", str(data), "--config", str(cfg), "--no-progress"]) == 0
    result = cli("tail", "texts", "--config", str(cfg))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert {line["value"]["text"] for line in lines} == {"hello, world", "bye"}
    assert all(line["value"]["meta"]["label"] in ("positive", "negative") for line in lines)
    assert TextRecord  # the decoded schema is the protobuf TextRecord


def test_produce_refuses_a_file_without_the_text_column(make_config, tmp_path):
    cfg = write(make_config(), tmp_path / "p.yaml")
    data = tmp_path / "x.csv"
    data.write_text("id,body\n1,hi\n")
    result = cli("produce", str(data), "--config", str(cfg), "--no-progress")
    assert result.returncode == 2
    assert "'text'" in result.stderr


def test_broker_command_serves_and_announces(tmp_path):
    from autoannotator.stream.broker import free_port

    port = free_port()
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"task": {"labels": ["a", "b"]}, "data_dir": str(tmp_path / "data")}))
    proc = subprocess.Popen([sys.executable, "-m", "autoannotator.cli", "broker", "--port", str(port),
                             "--config", str(cfg)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line
        wait_for_broker(f"127.0.0.1:{port}", 10)
        announced = json.loads((tmp_path / "data" / "broker.json").read_text())
        assert announced["bootstrap"] == f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)
    assert not (tmp_path / "data" / "broker.json").exists()
