"""Per-service HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

Metric names start with ``autoannotator_``; each service declares its own metrics beside its
code (module-level prometheus_client objects), the loop declares the shared ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest

log = logging.getLogger(__name__)

#: End-to-end latency: age of a record (since it entered the pipeline, ``TextRecord.created_ms``,
#: which falls back to the Kafka timestamp of ``texts``) when its final outcome is written. Observed
#: once per decided record by the voter (labels, rejections, and hand-overs to review as
#: outcome="hard") and by the reviewer (its labels and rejections).
RECORD_AGE = Histogram(
    "autoannotator_record_age_seconds",
    "Age of a record when a stage decides it (now - created_ms): end-to-end latency",
    ["stage", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)


def record_age_s(created_ms: int, now_s: float | None = None) -> float:
    """Seconds since ``created_ms`` (0 when unknown or in the future: clocks of producers drift)."""
    if created_ms <= 0:
        return 0.0
    return max(0.0, (time.time() if now_s is None else now_s) - created_ms / 1000)


class MetricsServer:
    """A small threaded HTTP server for metrics and probes, started beside a service's loop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Callable[[], bool] = lambda: True,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def bind(self, *, health: Callable[[], bool], ready: Callable[[], bool]) -> None:
        """Answer the probes with these checks from now on (a server started before the service exists)."""
        self._health = health
        self._ready = ready

    @property
    def running(self) -> bool:
        """Whether the server is bound and serving."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        return self._server.server_address[1] if self._server else self._port

    @property
    def url(self) -> str:
        """Base URL of the endpoint."""
        return f"http://{self._host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in a daemon thread (a no-op when already serving)."""
        if self._server is not None:
            return
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = outer._health()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
                elif path == "/readyz":
                    ok = outer._ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
