"""The trainer: reviewed samples -> durable pool -> fine-tuning rounds -> gated, versioned releases.

Layers: :mod:`.pool` (the durable SQLite pool and the round ledger), :mod:`.finetune` (torch
fine-tuning of a specialist's current weights), :mod:`.gate` (held-out evaluation through ONNX),
:mod:`.rounds` (one round end to end: fine-tune, gate, export, publish, announce) and
:mod:`.service` (the :class:`~.service.Trainer` processor on the shared loop).
"""
