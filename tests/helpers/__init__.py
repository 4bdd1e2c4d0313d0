"""Helpers shared by the tests (no tests here): the broker, tiny models, waiting, the pipeline harness.

- :mod:`.kafka`: run a service loop in a thread, send and collect messages;
- :mod:`.tiny_model`: real tiny Hugging Face / ONNX models built offline;
- :mod:`.waiting`: the one ``wait_until``;
- :mod:`.pipeline`: the whole pipeline as subprocesses, with an outcome watcher (reliability tests);
- :mod:`.reviewer`: hard samples and readers for the reviewer tests;
- :mod:`.cdp`: a headless Chromium over the DevTools protocol (review-page tests);
- :mod:`.echo_service`: a minimal service run as a subprocess by the crash tests.
"""
