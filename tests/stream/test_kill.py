"""kill -9 of each service mid-stream, restarted by the supervisor: no input id is lost.

Duplicates are possible (at-least-once: a killed service re-reads from its last commit) and are
counted, not asserted away; what must hold is that every input id ends in a label or a rejection,
never both and never two different labels.
"""

from __future__ import annotations

import time

import pytest
from autoannotator.tools.audit import ids_from_topic
from autoannotator.trainer.pool import SamplePool

from tests.helpers.pipeline import (
    PipelineRun,
    gold_for,
    json_items,
    make_texts,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

SERVICES = ("specialist-s1", "voter", "reviewer", "trainer")


def test_kill_9_of_each_service_mid_stream_loses_no_record(make_config, kafka_bootstrap, tmp_path, tiny_artifact,
                                                           second_artifact):
    waves = [make_texts(15, prefix=f"w{n}-") for n in range(len(SERVICES) + 1)]
    everything = {rid: text for wave in waves for rid, text in wave.items()}
    run = PipelineRun(make_config, kafka_bootstrap, tmp_path, {"s1": tiny_artifact, "s2": second_artifact},
                      gold=gold_for(everything), trainer=True)
    with run:
        watcher = run.watcher()
        try:
            run.send(json_items(waves[0]))
            watcher.wait_for(waves[0], 120)  # the pipeline is up and labelling
            for service, wave in zip(SERVICES, waves[1:], strict=True):
                run.send(json_items(wave))
                time.sleep(0.5)  # the wave is in flight
                run.kill9(service)
            watcher.wait_for(everything, 150)
            reviewed = set(ids_from_topic(run.config, kafka_bootstrap, "reviewed", timeout_s=3))
        finally:
            watcher.close()
        # The trainer (killed too) ends with every reviewed sample in its pool.
        pool = SamplePool(tmp_path / "pool.sqlite", holdout_fraction=0.2)
        try:
            wait_until(lambda: pool.size() >= len(reviewed), 60, "the trainer's pool to hold every reviewed sample")
        finally:
            pool.close()
    assert run.supervisor_errors == []
    assert all(run.supervisor.child(name).restarts >= 1 for name in SERVICES)
    report = run.audit()
    print(f"kill -9 run: inputs={report.inputs} lost={len(report.lost)} duplicates={report.duplicate_messages} "
          f"by source={report.labels_by_source}")
    assert report.inputs == len(everything)
    assert report.lost == []
    assert report.conflicting == []
    assert report.unexpected == []
