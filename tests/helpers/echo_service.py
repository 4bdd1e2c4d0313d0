"""A minimal service on the shared loop, run as a subprocess by the crash tests.

It copies every ``texts`` record to ``labels`` (keyed by record id), optionally slowly, so a
test can ``kill -9`` it mid-batch. Usage: ``python tests/helpers/echo_service.py CONFIG [DELAY_S]``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from autoannotator.config import load_config
from autoannotator.runtime import setup_logging
from autoannotator.stream import Outbox, Processor, ServiceLoop, run_service
from autoannotator.wire import Label, LabelSource, RawMessage


class Echo(Processor):
    """Labels every record 'echo'."""

    topics = ("texts",)

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def handle(self, batch: Sequence[RawMessage], out: Outbox) -> None:
        for msg in batch:
            out.send("labels", msg.record_id, Label(record_id=msg.record_id, label="echo",
                                                     source=LabelSource.LABEL_SOURCE_CONSENSUS))
        if self.delay_s:
            time.sleep(self.delay_s)


def main() -> None:
    setup_logging("WARNING")
    config = load_config(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    config.kafka.consume_batch = 50
    loop = ServiceLoop(config, "echo", Echo(delay), bootstrap=config.bootstrap_servers() or "", create_topics=False)
    run_service(loop)


if __name__ == "__main__":
    main()
