"""Saved evidence for the bench scripts: ``--save`` keeps a script's full output under ``results/<bench>/``.

Every saved output starts with the exact command, the commit it ran from (``+dirty`` when the tree
had uncommitted changes), the date (UTC) and the machine (CPU count and model, GPU name or none,
load average at the start), so a figure quoted in the README can be traced to the run that produced it.

    with Evidence("voter", ROOT / "results" / "voter", sys.argv[1:], save=args.save) as evidence:
        ...                      # everything printed to stdout is also written to results/voter/voter.txt

or, for a script whose parser has ``--save``: ``with Evidence.from_argv("voter"): main()``.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The short commit of the working tree, ``+dirty`` when tracked files differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str:
    """The GPU's name as nvidia-smi reports it, or ``none``."""
    if shutil.which("nvidia-smi") is None:
        return "none"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "none"
    return ", ".join(line.strip() for line in out.splitlines() if line.strip()) or "none"


class _Tee:
    """Writes to the terminal and keeps a copy."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


class Evidence:
    """Copies stdout to ``<out>/<bench>.txt`` when ``save`` is set, headed by command, commit, date, machine."""

    def __init__(self, bench: str, out: Path, argv: list[str], *, save: bool) -> None:
        self.bench = bench
        self.out = Path(out)
        self.argv = list(argv)
        self.save = save
        self.commit = commit()
        self.date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        # The load average says how shared the machine was when the run started (figures are noisy under load).
        load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"
        self.machine = f"{os.cpu_count()} CPUs ({cpu_model()}), GPU: {gpu_name()}, load average {load} at start"
        self._tee: _Tee | None = None

    @property
    def command(self) -> str:
        """The command as it was run."""
        script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else f"{self.bench}.py"
        return " ".join(["python", f"bench/{script}", *self.argv])

    def header(self) -> str:
        """``Command `...` at commit ..., date, machine``."""
        return f"`{self.command}` at commit {self.commit}, {self.date}, {self.machine}."

    def meta(self) -> dict[str, str]:
        """The header's parts for a JSON output."""
        return {"command": self.command, "commit": self.commit, "date": self.date, "machine": self.machine}

    @classmethod
    def from_argv(cls, bench: str) -> Evidence:
        """For a script whose parser has ``--save``: save to ``results/<bench>/`` when it is given."""
        argv = sys.argv[1:]
        return cls(bench, ROOT / "results" / bench, argv, save="--save" in argv)

    def __enter__(self) -> Evidence:
        if self.save:
            self._tee = _Tee(sys.stdout)
            sys.stdout = self._tee  # type: ignore[assignment]
            if self.bench != "paper":
                print(self.header(), flush=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._tee is None:
            return
        sys.stdout = self._tee.stream
        self.out.mkdir(parents=True, exist_ok=True)
        text = "".join(self._tee.parts)
        if kind is not None:
            text += f"\n(run ended with {kind.__name__}: {exc})\n"
        path = self.out / f"{self.bench}.txt"
        path.write_text(text if text.startswith("`python") else self.header() + "\n\n" + text)
        print(f"saved {path}")
