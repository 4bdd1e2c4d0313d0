"""``autoannotator mock-llm`` as a child process answering from a run's gold labels.

Used by the pipeline harness (:mod:`autoannotator.demo.harness`), ``autoannotator annotate`` and
the tests: the reviewer talks to it over HTTP exactly as it would to a real OpenAI-compatible
endpoint. :func:`write_gold_csv` writes the gold file it reads (with a per-record difficulty
score for the difficulty-correlated error mode).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from autoannotator.exceptions import AutoAnnotatorError
from autoannotator.stream.broker import free_port


class GoldRecord(Protocol):
    """A labelled record (e.g. :class:`autoannotator.demo.datasets.Example`)."""

    id: str
    text: str
    label: str


class MockLLMStartError(AutoAnnotatorError):
    """The mock-llm child process did not answer in time."""


def write_gold_csv(path: Path, examples: Sequence[GoldRecord], difficulty: Mapping[str, float] | None = None) -> Path:
    """The gold labels of a stream as mock-llm reads them (id, text, label[, difficulty])."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        if difficulty is None:
            writer.writerow(["id", "text", "label"])
            writer.writerows((e.id, e.text, e.label) for e in examples)
        else:
            writer.writerow(["id", "text", "label", "difficulty"])
            # A record without a score is answered with independent errors (mock-llm's rule).
            writer.writerows((e.id, e.text, e.label, "" if (d := difficulty.get(e.id)) is None else f"{d:.6f}")
                             for e in examples)
    return path


def wait_http(url: str, timeout_s: float) -> None:
    """Until ``url`` answers (any HTTP status); :class:`MockLLMStartError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise MockLLMStartError(f"{url} did not answer within {timeout_s}s")


class MockLLMProcess:
    """``autoannotator mock-llm`` as a child process answering from the run's gold labels."""

    def __init__(self, gold_csv: Path, labels: Sequence[str], accuracy: float, latency_ms: float, log_path: Path,
                 error_mode: str = "independent") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        argv = [sys.executable, "-m", "autoannotator.cli", "mock-llm", "--gold", str(gold_csv), "--labels",
                ",".join(labels), "--accuracy", str(accuracy), "--latency-ms", str(latency_ms), "--port",
                str(self.port), "--error-mode", error_mode]
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"{self.url}/models", 60)
        except MockLLMStartError:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate it."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
