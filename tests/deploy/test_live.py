"""Every dashboard query parses and returns data from a real Prometheus scraping a real pipeline run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_dashboard_query_returns_data_from_a_scraped_pipeline_run() -> None:
    if not shutil.which("prometheus"):
        done = subprocess.run(["bash", str(ROOT / "deploy/tools.sh")], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"deploy/tools.sh could not install prometheus: {done.stderr[-500:]}")
    done = subprocess.run([sys.executable, str(ROOT / "deploy/live_check.py"), "--require-data"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "errors=0" in done.stdout and "empty=0" in done.stdout
