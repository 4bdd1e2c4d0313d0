"""Shared harness of the reliability and security tests (this module holds no tests itself).

:class:`PipelineRun` runs the whole pipeline the way ``autoannotator up`` does — a
:class:`~autoannotator.supervisor.Supervisor` with every service as a child process,
restarted when it dies — against the test broker, tiny ONNX specialists in a file model store and
an in-process :class:`~autoannotator.mockllm.server.MockLLM`. Tests kill children with SIGKILL,
break the LLM, read the children's log files and ``/metrics`` pages, and account for every input
id with :func:`~autoannotator.tools.audit.audit_topics`.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig
from autoannotator.mockllm.server import Gold, MockLLM
from autoannotator.stream.reader import TopicReader
from autoannotator.supervisor import Supervisor
from autoannotator.tools.audit import AuditReport, audit_topics

from tests.helpers.kafka import send
from tests.helpers.tiny_model import corpus_texts
from tests.helpers.waiting import wait_until

LABELS = ["negative", "neutral", "positive"]
SPECIALISTS = ("s1", "s2")


def make_texts(n: int, prefix: str = "r") -> dict[str, str]:
    """``n`` distinct texts keyed by id (corpus sentences with a running number)."""
    corpus = corpus_texts()
    return {f"{prefix}{i}": f"{corpus[i % len(corpus)]} number {i}" for i in range(n)}


def gold_for(ids: Iterable[str]) -> dict[str, str]:
    """A fixed gold label per id (what the mock LLM answers at accuracy 1)."""
    return {rid: LABELS[i % len(LABELS)] for i, rid in enumerate(ids)}


def json_items(texts: dict[str, str]) -> list[tuple[str, bytes]]:
    """(key, JSON value) pairs for the ``texts`` topic in the ``json`` input format."""
    import json

    return [(rid, json.dumps({"id": rid, "text": text}).encode()) for rid, text in texts.items()]


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (from /proc), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


class OutcomeWatcher:
    """Follows ``labels`` and ``rejected`` and counts outcomes per id (duplicates included)."""

    def __init__(self, config: PipelineConfig, bootstrap: str) -> None:
        self._readers = [TopicReader(config.kafka, bootstrap, topic) for topic in ("labels", "rejected")]
        self.seen: dict[str, int] = {}

    def poll(self) -> None:
        """Read whatever arrived."""
        for reader in self._readers:
            for msg in reader.poll(0.1):
                self.seen[msg.record_id] = self.seen.get(msg.record_id, 0) + 1

    def wait_for(self, ids: Iterable[str], timeout_s: float) -> None:
        """Block until every id has at least one outcome."""
        wanted = set(ids)

        def done() -> bool:
            self.poll()
            return wanted <= set(self.seen)

        try:
            wait_until(done, timeout_s, "outcomes", step_s=0.05)
        except AssertionError:
            missing = sorted(wanted - set(self.seen))
            raise AssertionError(f"{len(missing)} ids without an outcome after {timeout_s}s: {missing[:10]}") from None

    def close(self) -> None:
        """Close the readers."""
        for reader in self._readers:
            reader.close()


@dataclass
class PipelineRun:
    """The pipeline as ``up`` runs it, with knobs for fault injection.

    ``sections`` are merged into the test config (``make_config`` keyword arguments); ``env`` is
    added to the children's environment.
    """

    make_config: Callable[..., PipelineConfig]
    bootstrap: str
    root: Path
    artifacts: dict[str, Path]
    gold: dict[str, str] = field(default_factory=dict)
    mock_options: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    trainer: bool = False
    reviewer: bool = True
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        self.store = ModelStore(f"file://{self.root / 'store'}")
        self.log_dir = self.root / "logs"
        self.mock: MockLLM | None = None
        self.mock_port = 0
        self.supervisor: Supervisor | None = None
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None
        self.supervisor_errors: list[BaseException] = []
        self.config: PipelineConfig | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> PipelineRun:
        """Publish the specialists, start the mock LLM, then every service under a supervisor."""
        for name, artifact in self.artifacts.items():
            self.store.set_current(name, self.store.publish(name, artifact).version)
        url = self.start_llm()
        sections: dict[str, Any] = {
            "input": {"format": "json", "max_text_bytes": 2000},
            "store": {"uri": self.store.uri},
            "specialists": [{"name": n, "threads": 1, "max_wait_ms": 5} for n in self.artifacts],
            "voter": {"policy": "vote", "eps": 0.3, "join_timeout_s": 20},
            "reviewer": {"llm": {"base_url": url, "batch_size": 4, "concurrency": 2, "timeout_s": 5,
                                 "backoff_initial_s": 0.1, "backoff_max_s": 1.0, "breaker_cooldown_s": 2},
                         "cache_path": str(self.root / "cache.sqlite")},
            "trainer": {"enabled": self.trainer, "beta": 100_000, "pool_path": str(self.root / "pool.sqlite")},
            "data_dir": str(self.root / "data"),
        }
        for key, value in self.sections.items():
            if isinstance(value, dict) and isinstance(sections.get(key), dict):
                merged = dict(sections[key])
                for sub, subval in value.items():
                    if isinstance(subval, dict) and isinstance(merged.get(sub), dict):
                        merged[sub] = {**merged[sub], **subval}
                    else:
                        merged[sub] = subval
                sections[key] = merged
            else:
                sections[key] = value
        self.config = self.make_config(**sections)
        path = self.root / "pipeline.yaml"
        path.write_text(yaml.safe_dump(self.config.model_dump(mode="json")))
        env = {**os.environ, "AUTOANNOTATOR_LOG": self.log_level, "AUTOANNOTATOR_KAFKA_BOOTSTRAP": self.bootstrap,
               **self.env}
        self.supervisor = Supervisor(self.config, path, metrics_base_port=0, env=env, log_dir=self.log_dir,
                                     max_restarts=20)
        self.supervisor.start(trainer=self.trainer, reviewer=self.reviewer)
        self._watch = threading.Thread(target=self._supervise, name="supervise", daemon=True)
        self._watch.start()
        return self

    def _supervise(self) -> None:
        # What Supervisor.wait() does in `up`, without taking over the test's signal handlers.
        while not self._watch_stop.wait(0.3):
            try:
                assert self.supervisor is not None
                self.supervisor.check()
            except BaseException as exc:
                self.supervisor_errors.append(exc)
                return

    def start_llm(self) -> str:
        """Start (or restart, on the same port) the mock LLM; returns its base URL."""
        gold = Gold()
        for rid, label in self.gold.items():
            gold.add(label, record_id=rid)
        if self.mock is None:
            self.mock = MockLLM(gold, labels=LABELS, **self.mock_options)
        url = self.mock.start_in_thread(port=self.mock_port)
        self.mock_port = self.mock.port
        return url

    def stop_llm(self) -> None:
        """Take the LLM endpoint down (connections are refused until :meth:`start_llm`)."""
        assert self.mock is not None
        self.mock.stop_thread()

    def stop(self) -> None:
        """Stop the supervisor's children gracefully, then the mock LLM."""
        self._watch_stop.set()
        if self._watch is not None:
            self._watch.join(5)
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.mock is not None:
            self.mock.stop_thread()

    def __enter__(self) -> PipelineRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ---------------------------------------------------------------------------
    def pid(self, name: str) -> int:
        """Process id of a running child (``specialist-s1``, ``voter``, ``reviewer``, ``trainer``)."""
        assert self.supervisor is not None
        proc = self.supervisor.child(name).proc
        assert proc is not None
        return proc.pid

    def kill9(self, name: str, timeout_s: float = 30) -> int:
        """SIGKILL a child and wait until the supervisor has restarted it; returns the new pid."""
        old = self.pid(name)
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: self.pid(name) != old, timeout_s, f"{name} to be restarted")
        return self.pid(name)

    # -- input and output -----------------------------------------------------------------
    def send(self, items: list[tuple[str | None, bytes]]) -> int:
        """Produce raw (key, value) pairs to ``texts``."""
        assert self.config is not None
        return send(self.config, self.bootstrap, "texts", items)

    def watcher(self) -> OutcomeWatcher:
        """A reader of ``labels`` ∪ ``rejected``."""
        assert self.config is not None
        return OutcomeWatcher(self.config, self.bootstrap)

    def audit(self) -> AuditReport:
        """The no-loss audit of this run (input ids vs labels ∪ rejected)."""
        assert self.config is not None
        return audit_topics(self.config, self.bootstrap, timeout_s=5)

    def logs(self) -> str:
        """Everything the children printed (their log files)."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def metrics_urls(self) -> list[str]:
        """The ``/metrics`` URLs the children announced in their logs (latest instance of each)."""
        urls = dict.fromkeys(re.findall(r"metrics on (http://[0-9.:]+)", self.logs()))
        return [f"{url}/metrics" for url in urls]

    def metrics_pages(self) -> dict[str, str]:
        """Every reachable ``/metrics`` page, by URL."""
        pages = {}
        for url in self.metrics_urls():
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    pages[url] = resp.read().decode()
            except OSError:
                continue  # an instance that was killed and replaced
        return pages
