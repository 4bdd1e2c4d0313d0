"""Replicates a deploy/Dockerfile target's install lines in a throw-away venv (no image builder here).

``python tests/helpers/image_targets.py TARGET VENV_DIR`` builds the project's wheel, creates ``VENV_DIR`` and
runs exactly the target's ``pip install`` / ``pip uninstall`` commands from the Dockerfile, with
``$(ls /tmp/wheels/*.whl)`` replaced by the wheel. The venv holds what the image would hold (same
packages, same extras), not the image's OS. A finished venv is marked with a stamp holding the hash
of the target's pip lines and of pyproject.toml; a later run with unchanged inputs only reinstalls
the project's own wheel (``--no-deps``), so the venv always runs this tree's code.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy/Dockerfile"


def install_commands(target: str, dockerfile: Path = DOCKERFILE) -> list[str]:
    """The shell commands of ``target``'s ``RUN`` lines that call pip (continuations joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM\s+", text, flags=re.MULTILINE)
    for stage in stages[1:]:
        header, _, body = stage.partition("\n")
        if re.search(rf"\bAS\s+{re.escape(target)}\s*$", header.strip(), flags=re.IGNORECASE):
            commands: list[str] = []
            for line in body.splitlines():
                if line.startswith("RUN "):
                    commands += [c.strip() for c in line[4:].split("&&") if re.match(r"\s*pip\s", c)]
            return commands
    raise KeyError(f"deploy/Dockerfile has no target {target!r}")


def stamp_for(target: str) -> str:
    """Hash of what decides the venv's content."""
    commands = "\n".join(install_commands(target)).encode()
    digest = hashlib.sha256(commands + (ROOT / "pyproject.toml").read_bytes() + target.encode())
    return digest.hexdigest()[:16]


def build(target: str, venv: Path) -> Path:
    """Create ``venv`` with the target's packages; returns its python. Idempotent for unchanged inputs."""
    # Nothing of the calling environment: with this tree on PYTHONPATH pip would take the project as
    # already installed and skip it.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    stamp = venv / f".image-{stamp_for(target)}"
    python = venv / "bin/python"
    fresh = not stamp.is_file()
    if fresh:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, env=env)
    with tempfile.TemporaryDirectory() as wheels:
        subprocess.run([str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, str(ROOT)], check=True,
                       env=env)
        [wheel] = Path(wheels).glob("*.whl")
        if not fresh:
            # Same packages as before; only this tree's code is replaced.
            subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                           check=True, env=env)
            return python
        for command in install_commands(target):
            command = command.replace('"$(ls /tmp/wheels/*.whl)', f'"{wheel}')
            argv = shlex.split(command)
            assert argv[0] == "pip", command
            # Only pip's own flags for the image build; same packages and index as the image.
            print(f"[{target}] {' '.join(argv)}", file=sys.stderr)
            subprocess.run([str(python), "-m", *argv], check=True, env=env)
    done = subprocess.run([str(python), "-c", "import autoannotator.cli"], env=env, cwd=venv, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {target} venv cannot import autoannotator: {done.stderr[-500:]}")
    stamp.touch()
    return python


if __name__ == "__main__":
    print(build(sys.argv[1], Path(sys.argv[2])))
