"""The specialist service: one small ONNX classifier labelling the ``texts`` topic.

Layers, as in text-embeddings-inference: :mod:`.service` (Kafka in/out, the Processor) →
:mod:`.batcher` (token-budget batches) → :mod:`autoannotator.artifacts.engine` (tokenizer + ONNX
Runtime backend, shared with the trainer's gate and calibration); :mod:`.reload` follows
``model-releases`` and hands new engines to the service between batches.
"""
