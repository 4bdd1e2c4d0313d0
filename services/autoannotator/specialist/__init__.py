"""The specialist service: one small ONNX classifier labelling the ``texts`` topic.

Layers, as in text-embeddings-inference: :mod:`.service` (Kafka in/out, the Processor) →
:mod:`.batcher` (token-budget batches) → :mod:`.engine` (tokenizer + ONNX Runtime backend);
:mod:`.reload` follows ``model-releases`` and hands new engines to the service between batches.
"""

from autoannotator.specialist.engine import InferenceEngine

__all__ = ["InferenceEngine"]
