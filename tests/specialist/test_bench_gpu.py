"""bench/gpu_specialist.sh: the GPU benchmark's code runs end to end on the CPU (--cpu-smoke)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_specialist.sh"


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0


def test_cpu_smoke_prints_every_path_and_the_result_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(SCRIPT), "--cpu-smoke", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "torch fp32 forward" in out and "ORT cpu fp32, optimised graph: infer only" in out
    # No TensorRT here: its row says why instead of a figure, never silently missing.
    assert re.search(r"ORT tensorrt fp32: infer only\s+-\s+failed: ProviderUnavailable", out), out
    assert "tokenize + infer + softmax, overlapped" in out and "Specialist processor on cpu" in out
    result = re.search(r"^RESULT gpu_infer_tps=([\d.]+) torch_fp16_tps=([\d.]+) gpu_infer_vs_torch=([\d.]+) "
                       r"gpu_e2e_vs_infer=([\d.]+) smoke=1$", out, re.MULTILINE)
    assert result, out
    infer, torch_tps, ratio, _ = (float(x) for x in result.groups())
    assert infer > 0 and torch_tps > 0 and abs(ratio - infer / torch_tps) <= 0.002 * ratio + 0.001  # printed rounded
    written = (tmp_path / "gpu_specialist_cpu_smoke.txt").read_text()
    assert result.group(0) in written
