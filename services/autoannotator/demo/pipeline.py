"""One run of the whole pipeline on the embedded defaults, as the demo runs it (shared with the benches).

:func:`pipeline_run` starts ``mock-llm`` answering from the run's gold labels (the simulated
reviewer), writes the run's config, starts the embedded broker and every service under the
:class:`~autoannotator.supervisor.Supervisor` (specialists following ``model-releases``,
voter, reviewer over HTTP, trainer unless training is off) and a :class:`Tracker` that follows
the outcomes; it stops everything when the block ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from autoannotator.config import PipelineConfig
from autoannotator.demo.datasets import Example
from autoannotator.demo.tracker import Tracker
from autoannotator.stream.broker import free_port
from autoannotator.supervisor import Supervisor


@dataclass
class PipelineRun:
    """A running pipeline: its config, supervisor (services) and tracker (outcomes)."""

    config: PipelineConfig
    supervisor: Supervisor
    tracker: Tracker
    run_dir: Path


@contextmanager
def pipeline_run(options: object, store_uri: str, records: Sequence[Example], labels: Sequence[str],
                 run_dir: Path) -> Iterator[PipelineRun]:
    """Start mock-llm (from the records' gold labels), the services and a tracker; stop them after the block.

    ``options`` is a :class:`~autoannotator.demo.run.DemoOptions` (training, routing, reviewer).
    ``$AUTOANNOTATOR_LLM_URL`` is not passed on: the reviewer is the simulated one.
    """
    from autoannotator.demo.run import LLM_URL_ENV, MockLLMProcess, demo_config, write_gold_csv

    run_dir.mkdir(parents=True, exist_ok=True)
    gold_csv = write_gold_csv(run_dir / "gold.csv", list(records))
    mock = MockLLMProcess(gold_csv, list(labels), options.llm_accuracy, options.llm_latency_ms,
                          run_dir / "mock-llm.log")
    try:
        config = demo_config(options, run_dir, store_uri, mock.url)
        config_path = run_dir / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        env = {k: v for k, v in os.environ.items() if k != LLM_URL_ENV}
        supervisor = Supervisor(config, config_path, metrics_base_port=free_port(), env=env,
                                log_dir=run_dir / "logs")
        tracker: Tracker | None = None
        try:
            supervisor.start()
            tracker = Tracker(config, supervisor.bootstrap)
            yield PipelineRun(config, supervisor, tracker, run_dir)
        finally:
            if tracker is not None:
                tracker.close()
            supervisor.stop()
    finally:
        mock.stop()
