"""Sends every Grafana panel query to a real Prometheus that scraped a short real pipeline run.

Steps: start the embedded broker; build two tiny ONNX specialists and publish them to a file://
store; start mock-llm and every service sub-command that exists (specialists, voter, reviewer,
trainer) as processes, each with its own metrics port; start Prometheus on loopback scraping
those ports every second; produce a few tens of records; then query ``/api/v1/query`` with each
panel's expression (``$__rate_interval`` replaced by a fixed window). Prints one line per query:
OK (series returned), EMPTY (parsed, no data) or ERROR (Prometheus rejected it).

Exit status: 1 when any query errors, or with ``--require-data`` when any returns no data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy/grafana"))

from autoannotator.stream.broker import EmbeddedBroker, free_port  # noqa: E402
from dashboard import build, queries  # noqa: E402

LABELS = ["negative", "neutral", "positive"]
RANGE = "1m"


class LiveCheckError(Exception):
    """The harness could not set up the pipeline or Prometheus."""


def _cli_commands() -> set[str]:
    """Sub-commands the installed CLI offers right now (services land over time)."""
    from autoannotator.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _publish_models(store_dir: Path, names: list[str], work: Path) -> None:
    from autoannotator.artifacts.store import ModelStore

    from tests.helpers.tiny_model import build_tiny_artifact, build_tiny_hf_model

    store = ModelStore(f"file://{store_dir}")
    for seed, name in enumerate(names):
        hf = build_tiny_hf_model(work / f"hf-{name}", seed=seed)
        artifact = build_tiny_artifact(work / f"artifact-{name}", model_dir=hf)
        manifest = store.publish(name, artifact)
        store.set_current(name, manifest.version)


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LiveCheckError(f"exited with {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise LiveCheckError(f"{url} did not answer within {timeout_s}s")


def _concrete(expr: str) -> str:
    """A panel's query as Grafana would send it: fixed rate window, every namespace and job ("All")."""
    return expr.replace("$__rate_interval", RANGE).replace("$namespace", ".*").replace("$job", ".*")


def _query(prom: str, expr: str) -> tuple[str, int, str]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
    if body.get("status") != "success":
        return "ERROR", 0, str(body.get("error", body))
    n = len(body["data"]["result"])
    return ("OK" if n else "EMPTY"), n, ""


def run(args: argparse.Namespace) -> int:
    """Run the pipeline, scrape it, check every panel query; returns the exit status."""
    work = Path(tempfile.mkdtemp(prefix="aa-live-"))
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    broker = EmbeddedBroker(log_path=work / "broker.log").start()
    try:
        commands = _cli_commands()
        specialists = ["s1", "s2"]
        store_dir = work / "store"
        if "specialist" in commands:
            _publish_models(store_dir, specialists, work)
        texts = [f"record {i}: " + t for i, t in enumerate(_texts(args.records))]
        records = work / "texts.jsonl"
        gold = work / "gold.jsonl"
        with records.open("w") as rf, gold.open("w") as gf:
            for i, text in enumerate(texts):
                rf.write(json.dumps({"id": f"r{i}", "text": text}) + "\n")
                gf.write(json.dumps({"id": f"r{i}", "text": text, "label": LABELS[i % 3]}) + "\n")
        llm_port = free_port()
        config = {
            "task": {"name": "live", "description": "sentiment", "labels": LABELS},
            "kafka": {"bootstrap_servers": broker.bootstrap, "topic_prefix": "live.", "partitions": 2,
                      "session_timeout_ms": 3000},
            "store": {"uri": f"file://{store_dir}"},
            "specialists": [{"name": n} for n in specialists],
            "voter": {"policy": "vote", "eps": 0.34, "join_timeout_s": 5, "quorum": 1},
            "reviewer": {
                # llm+human: the human queue exists (its panel has data); the LLM decides every record.
                "mode": "llm+human",
                "llm": {"base_url": f"http://127.0.0.1:{llm_port}/v1", "model": "mock", "batch_size": 5,
                        "prices": {"mock": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}},
                "budget": {"max_usd_per_hour": 100.0, "max_usd_total": 1000.0},
                "human": {"queue_path": str(work / "queue.sqlite"), "host": "127.0.0.1", "port": free_port()},
                "cache_path": str(work / "cache.sqlite"),
            },
            "trainer": {"beta": 5, "epochs": 1, "max_steps": 2, "pool_path": str(work / "pool.sqlite")},
            "data_dir": str(work / "data"),
        }
        config_path = work / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "AUTOANNOTATOR_LLM_API_KEY": "live-check-key", "HF_HUB_OFFLINE": "1",
               "AUTOANNOTATOR_REVIEW_TOKEN": "live-check-review-token"}
        cli = [sys.executable, "-m", "autoannotator.cli"]

        def spawn(name: str, argv: list[str]) -> None:
            log = (work / f"{name}.log").open("ab")
            procs.append((name, subprocess.Popen([*cli, *argv], env=env, stdout=log, stderr=subprocess.STDOUT)))

        if "mock-llm" in commands:
            spawn("mock-llm", ["mock-llm", "--gold", str(gold), "--port", str(llm_port), "--api-key-env",
                               "AUTOANNOTATOR_LLM_API_KEY"])
        targets: dict[str, int] = {}
        wanted = [(f"specialist-{n}", ["specialist", "--name", n]) for n in specialists]
        wanted += [("voter", ["voter"]), ("reviewer", ["reviewer"]), ("trainer", ["trainer"])]
        missing = []
        for name, argv in wanted:
            if argv[0] not in commands:
                missing.append(name)
                continue
            port = free_port()
            targets[name] = port
            spawn(name, [*argv, "--config", str(config_path), "--metrics-port", str(port)])
        if missing:
            print(f"services not in the CLI yet (not run): {', '.join(missing)}")

        prom_port = free_port()
        scrape = {
            # A 2 s timeout: on a loaded 2-core machine a service busy with inference or training can
            # take over a second to answer /metrics, and a failed scrape leaves its panels empty.
            "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
            "scrape_configs": [
                {"job_name": f"autoannotator-{name}",
                 "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"accelerator": "cpu"}}]}
                for name, port in targets.items()
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(scrape))
        prom_log = (work / "prometheus.log").open("ab")
        procs.append(("prometheus", subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=prom_log, stderr=subprocess.STDOUT)))
        prom = f"http://127.0.0.1:{prom_port}"
        _wait_http(f"{prom}/-/ready", 30)
        by_name = dict(procs)
        for name, port in list(targets.items()):
            try:
                _wait_http(f"http://127.0.0.1:{port}/metrics", 60, by_name[name])
            except LiveCheckError as exc:
                # A service that cannot start is reported; its panels show up as EMPTY below.
                print(f"service {name} not scraped: {exc}")
        produced = subprocess.run([*cli, "produce", str(records), "--config", str(config_path), "--no-progress"],
                                  env=env, capture_output=True, text=True, timeout=60)
        if produced.returncode != 0:
            raise LiveCheckError(f"produce failed: {produced.stderr.strip()}")
        time.sleep(args.seconds)
        for name, proc in procs:
            if proc.poll() is not None:
                print(f"warning: {name} exited with {proc.returncode} (log: {work / (name + '.log')})")

        failures = empties = 0
        print(f"{'result':<6} {'series':>6}  panel / query")
        for title, expr in queries(build()):
            status, n, error = _query(prom, _concrete(expr))
            retry_until = time.monotonic() + 15
            while status == "EMPTY" and time.monotonic() < retry_until:
                time.sleep(2)  # a scrape may have been missed under load: give it a few more
                status, n, error = _query(prom, _concrete(expr))
            failures += status == "ERROR"
            empties += status == "EMPTY"
            print(f"{status:<6} {n:>6}  {title}: {expr}" + (f"  -> {error}" if error else ""))
        total = len(queries(build()))
        print(f"RESULT dashboard_queries={total} ok={total - failures - empties} empty={empties} errors={failures}")
        if failures or (args.require_data and empties):
            return 1
        return 0
    finally:
        for _name, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        broker.stop()
        if args.keep:
            print(f"kept logs and data in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _texts(n: int) -> list[str]:
    from tests.helpers.tiny_model import corpus_texts

    base = corpus_texts()
    return [base[i % len(base)] for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python deploy/live_check.py [--records N] [--seconds S] [--require-data] [--keep]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=25.0, help="how long to let the pipeline run after producing")
    parser.add_argument("--require-data", action="store_true", help="fail when a query returns no data")
    parser.add_argument("--keep", action="store_true", help="keep the run's logs and data")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
