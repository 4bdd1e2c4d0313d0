"""Several replicas of each service as child processes, which tests kill and add (no tests here).

Unlike :class:`~tests.helpers.pipeline.PipelineRun` (one process per service, restarted by the
supervisor), a :class:`Fleet` starts exactly the replicas a test asks for and never restarts one:
a replica killed with SIGKILL stays dead, and its partitions move to the others when its session
times out.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml
from autoannotator.config import PipelineConfig

from tests.helpers.waiting import wait_until


@dataclass
class Replica:
    """One service process."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Fleet:
    """Replicas of ``specialist-<name>``, ``voter`` and ``reviewer`` against one config; a context manager."""

    config: PipelineConfig
    bootstrap: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, Replica] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / "pipeline.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config.model_dump(mode="json")), encoding="utf-8")
        self._counts: dict[str, int] = {}

    def add(self, service: str) -> str:
        """Start one more replica of ``service`` (``voter``, ``reviewer``, ``specialist-s1``); returns its name."""
        n = self._counts.get(service, 0)
        self._counts[service] = n + 1
        name = f"{service}#{n}"
        args = ["specialist", "--name", service.split("-", 1)[1]] if service.startswith("specialist-") else [service]
        log_path = self.root / f"{name.replace('#', '-')}.log"
        argv = [sys.executable, "-m", "autoannotator.cli", *args, "--config", str(self.config_path),
                "--metrics-port", "0", "--instance", name.replace("#", "-")]
        env = {**os.environ, "AUTOANNOTATOR_KAFKA_BOOTSTRAP": self.bootstrap, "AUTOANNOTATOR_LOG": "INFO", **self.env}
        with log_path.open("ab") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.replicas[name] = Replica(name, proc, log_path)
        return name

    def log(self, name: str) -> str:
        """What a replica printed so far."""
        return self.replicas[name].log_path.read_text(errors="replace")

    def assigned(self, name: str) -> list[str]:
        """The partition lists a replica logged on each assignment (cooperative: only the added ones)."""
        return re.findall(r": assigned (\[.*?\])", self.log(name))

    def assignment_times(self, name: str) -> list[float]:
        """Epoch seconds at which a replica logged partitions assigned to it or revoked from it."""
        out = []
        for stamp, parts in re.findall(
            r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?: (?:assigned|revoked) (\[.*?\])",
            self.log(name), re.MULTILINE,
        ):
            if parts != "[]":
                out.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
        return out

    def rebalances(self, service: str, since: float, until: float, gap_s: float = 2.0) -> int:
        """Rebalances of one service's group between ``since`` and ``until`` (epoch s).

        A rebalance is a burst of partitions assigned or revoked in the group, ``gap_s`` apart from the next.
        """
        times = sorted(t for name in self.replicas if name.split("#")[0] == service
                       for t in self.assignment_times(name) if since <= t <= until)
        return sum(1 for i, t in enumerate(times) if i == 0 or t - times[i - 1] > gap_s)

    def wait_assigned(self, name: str, timeout_s: float = 60) -> None:
        """Block until a replica has joined its group and got at least one partition."""
        wait_until(lambda: any(parts != "[]" for parts in self.assigned(name)), timeout_s,
                   f"{name} to be assigned partitions")

    def kill9(self, name: str) -> None:
        """SIGKILL a replica; it is not restarted."""
        replica = self.replicas[name]
        os.kill(replica.proc.pid, signal.SIGKILL)
        replica.proc.wait(10)

    def alive(self) -> list[str]:
        """Names of the replicas still running."""
        return [name for name, r in self.replicas.items() if r.proc.poll() is None]

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM every live replica (graceful: finish the batch, commit, leave) and wait."""
        for name in self.alive():
            self.replicas[name].proc.send_signal(signal.SIGTERM)
        for name in list(self.replicas):
            try:
                self.replicas[name].proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.replicas[name].proc.kill()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
