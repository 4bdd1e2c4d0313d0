"""A broker restart mid-stream with persistent storage loses nothing.

Tansu keeps its log in S3 (``--storage-engine s3://tansu/``) on a local S3 emulator (moto's
threaded server, in memory but outliving the broker process). The broker is stopped while
records are in flight and started again on the same port; the services reconnect on their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from autoannotator.stream.broker import EmbeddedBroker, free_port

from tests.helpers.pipeline import (
    PipelineRun,
    gold_for,
    json_items,
    make_texts,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def s3_env() -> Iterator[dict[str, str]]:
    """A local S3 emulator with a ``tansu`` bucket; yields the AWS_* environment Tansu reads."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per S3 request otherwise
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="tansu")
    yield env
    server.stop()


def test_broker_restart_with_s3_storage_mid_stream_loses_no_record(make_config, tmp_path, s3_env, tiny_artifact,
                                                                   second_artifact):
    broker = EmbeddedBroker(storage="s3://tansu/", env=s3_env, log_path=tmp_path / "tansu.log").start()
    waves = [make_texts(20, prefix=f"w{n}-") for n in range(3)]
    everything = {rid: text for wave in waves for rid, text in wave.items()}
    run = PipelineRun(lambda **sections: make_config(create=False, **sections), broker.bootstrap, tmp_path,
                      {"s1": tiny_artifact, "s2": second_artifact}, gold=gold_for(everything),
                      sections={"kafka": {"bootstrap_servers": broker.bootstrap}})
    try:
        with run:
            watcher = run.watcher()
            try:
                run.send(json_items(waves[0]))
                watcher.wait_for(waves[0], 120)
                run.send(json_items(waves[1]))
                time.sleep(0.5)  # records of the second wave are in flight
                broker.stop()
                time.sleep(3)
                broker = EmbeddedBroker(broker.port, storage="s3://tansu/", env=s3_env,
                                        log_path=tmp_path / "tansu.log").start()
                run.send(json_items(waves[2]))
                watcher.wait_for(everything, 180)
            finally:
                watcher.close()
        report = run.audit()
    finally:
        broker.stop()
    print(f"broker restart: inputs={report.inputs} lost={len(report.lost)} duplicates={report.duplicate_messages}")
    assert report.inputs == len(everything)  # the first waves survived the restart on the input topic too
    assert report.lost == [] and report.conflicting == [] and report.unexpected == []
    assert run.supervisor_errors == []
