"""``autoannotator up``: every configured service as a child process, restarted if it crashes.

On Kubernetes each service is its own Deployment (helm/); this is the local equivalent. When no
Kafka is configured it starts the embedded broker first and hands its address to the children
through ``$AUTOANNOTATOR_KAFKA_BOOTSTRAP``.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from autoannotator.config import BOOTSTRAP_ENV, PipelineConfig
from autoannotator.runtime import broker_file
from autoannotator.stream.broker import EmbeddedBroker
from autoannotator.stream.kafka import ensure_topics

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One supervised service process."""

    name: str
    argv: list[str]
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)


class Supervisor:
    """Starts, watches and stops the pipeline's processes."""

    def __init__(
        self,
        config: PipelineConfig,
        config_path: Path,
        *,
        metrics_base_port: int = 9400,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        max_restarts: int = 5,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path).resolve()
        self.metrics_base_port = metrics_base_port
        self.env = dict(env or {})
        self.log_dir = log_dir
        self.max_restarts = max_restarts
        self.broker: EmbeddedBroker | None = None
        self.children: list[Child] = []
        self._stopping = False

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers the children use."""
        return self.env[BOOTSTRAP_ENV]

    def plan(self, *, trainer: bool = True, reviewer: bool = True) -> list[Child]:
        """The processes for this config, with their metrics ports."""
        base = [sys.executable, "-m", "autoannotator.cli"]
        names: list[tuple[str, list[str]]] = [
            (f"specialist-{s.name}", ["specialist", "--name", s.name]) for s in self.config.specialists
        ]
        names.append(("voter", ["voter"]))
        if reviewer:
            names.append(("reviewer", ["reviewer"]))
        if trainer and self.config.trainer.enabled:
            names.append(("trainer", ["trainer"]))
        children = []
        for i, (name, args) in enumerate(names):
            port = self.metrics_base_port + i if self.metrics_base_port else 0  # 0: each picks a free port
            argv = [*base, *args, "--config", str(self.config_path), "--metrics-port", str(port)]
            children.append(Child(name, argv, port))
        return children

    def start(self, *, trainer: bool = True, reviewer: bool = True) -> None:
        """Start the broker if needed, create the topics, then every service."""
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        configured = self.config.bootstrap_servers()
        if configured:
            self.env[BOOTSTRAP_ENV] = configured
        else:
            log_path = self.log_dir / "broker.log" if self.log_dir else None
            self.broker = EmbeddedBroker(log_path=log_path).start()
            self.env[BOOTSTRAP_ENV] = self.broker.bootstrap
            announced = broker_file(self.config)
            announced.parent.mkdir(parents=True, exist_ok=True)
            announced.write_text(json.dumps({"bootstrap": self.broker.bootstrap, "pid": self.broker.pid}))
        ensure_topics(self.config.kafka, self.bootstrap)
        self.children = self.plan(trainer=trainer, reviewer=reviewer)
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            child.log_path = self.log_dir / f"{child.name}.log"
            out = child.log_path.open("ab")
        child.proc = subprocess.Popen(
            child.argv, env={**self.env, **child.extra}, stdout=out, stderr=subprocess.STDOUT if out else None
        )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d, metrics :%d)", child.name, child.proc.pid, child.metrics_port)

    def child(self, name: str) -> Child:
        """The child with this name."""
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    def check(self) -> None:
        """Restart children that died, with a limit per child (a crash loop stops the pipeline)."""
        for child in self.children:
            if child.proc is None or child.proc.poll() is None or self._stopping:
                continue
            code = child.proc.returncode
            if child.restarts >= self.max_restarts:
                raise RuntimeError(f"{child.name} exited with {code} {child.restarts + 1} times; giving up")
            child.restarts += 1
            log.warning("%s exited with %s; restarting (%d/%d)", child.name, code, child.restarts, self.max_restarts)
            self._spawn(child)

    def wait(self) -> int:
        """Supervise until SIGINT/SIGTERM, then stop everything. Returns an exit code."""
        stop = {"now": False}

        def _signal(signum: int, _frame: object) -> None:
            stop["now"] = True

        previous = {sig: signal.signal(sig, _signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop["now"]:
                self.check()
                time.sleep(0.5)
        except RuntimeError as exc:
            log.error("%s", exc)
            self.stop()
            return 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stop()
        return 0

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every child (they finish their batch, flush and commit), then the broker."""
        self._stopping = True
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                child.proc.kill()
                child.proc.wait()
        if self.broker is not None:
            self.broker.stop()
            broker_file(self.config).unlink(missing_ok=True)
            self.broker = None
