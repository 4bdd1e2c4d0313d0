"""Shared streaming plumbing: the one consume–process–produce loop every service runs.

Layers, bottom up: :mod:`.kafka` (thin wrapper over confluent-kafka: client settings, topic
creation), :mod:`.checkpoint` (commit semantics), :mod:`.loop` (the loop that wires a
:class:`~.loop.Processor` to them), :mod:`.reader` (reading a topic such as ``model-releases``
without a consumer group), :mod:`.broker` (the embedded broker for local runs and tests).
Nothing above this package touches librdkafka.
"""

from autoannotator.stream.loop import Outbox, Processor, ServiceLoop, run_service

__all__ = ["Outbox", "Processor", "ServiceLoop", "run_service"]
