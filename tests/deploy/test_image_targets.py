"""Each deploy/Dockerfile target starts against an ``s3://`` model store with exactly what it installs.

No image builder runs here: tests/helpers/image_targets.py replays each target's ``pip`` lines in a
throw-away venv (kept under .autoannotator/image-venvs, rebuilt when the Dockerfile or pyproject
changes; the first build takes 1 to 4 minutes per target). The venv runs the installed wheel, never
this tree (PYTHONPATH is cleared). A moto server plays S3; the artifact is seeded from an
``s3://`` URI with ``models add --if-empty``, as the chart's seed Job does.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from autoannotator.stream.broker import free_port

from tests.helpers.image_targets import build, install_commands

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".autoannotator/image-venvs"
BUCKET = "aa-image-test"
#: target -> services of that image that open the model store.
SERVICES = {"cpu": ["specialist"], "cuda": ["specialist"], "trainer": ["trainer"]}


@pytest.mark.parametrize("target", sorted(SERVICES))
def test_every_target_that_opens_the_store_installs_the_s3_backend(target: str) -> None:
    commands = " ".join(install_commands(target))
    assert "*.whl)[" in commands and "s3" in commands.split("*.whl)[", 1)[1].split("]", 1)[0], commands


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, object]]:
    """A moto S3 server with one bucket; yields the fsspec storage options."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import s3fs

    options = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(BUCKET)
    try:
        yield options
    finally:
        server.stop()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.parametrize("target", sorted(SERVICES))
def test_each_image_target_starts_its_services_on_an_s3_store(
    target: str, s3: dict[str, object], tiny_artifact: Path, kafka_bootstrap: str, tmp_path: Path,
) -> None:
    try:
        python = build(target, VENVS / target)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"the {target} target's install lines failed in a fresh venv: {exc}")
    import s3fs

    prefix = f"{target}-{time.time_ns()}"
    s3fs.S3FileSystem(**s3).put(str(tiny_artifact), f"{BUCKET}/{prefix}/artifacts/s1", recursive=True)
    config = {
        "task": {"name": "image", "description": "image start-up", "labels": ["negative", "neutral", "positive"]},
        "kafka": {"bootstrap_servers": kafka_bootstrap, "topic_prefix": f"{prefix}.", "partitions": 1,
                  "session_timeout_ms": 3000},
        "store": {"uri": f"s3://{BUCKET}/{prefix}/models", "options": s3},
        "specialists": [{"name": "s1"}],
        "voter": {"quorum": 1},
        "trainer": {"pool_path": str(tmp_path / "pool.sqlite")},
        "data_dir": str(tmp_path / "data"),
    }
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    cli = [str(python), "-m", "autoannotator.cli"]
    seeded = subprocess.run([*cli, "models", "add", "--config", str(config_path), "--name", "s1", "--if-empty",
                             f"s3://{BUCKET}/{prefix}/artifacts/s1"], env=env, capture_output=True, text=True,
                            timeout=180)
    assert seeded.returncode == 0, seeded.stderr[-2000:]
    assert "current version is" in seeded.stdout
    for service in SERVICES[target]:
        port = free_port()
        argv = [*cli, service, "--config", str(config_path), "--metrics-port", str(port)]
        if service == "specialist":
            argv += ["--name", "s1"]
        log = (tmp_path / f"{service}.log").open("wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None and not _ready(f"http://127.0.0.1:{port}/readyz"):
                time.sleep(0.5)
            output = (tmp_path / f"{service}.log").read_text(errors="replace")[-3000:]
            assert proc.poll() is None, f"{target}: {service} exited with {proc.returncode}:\n{output}"
            assert _ready(f"http://127.0.0.1:{port}/readyz"), f"{target}: {service} never became ready:\n{output}"
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
