"""``autoannotator mock-llm``: an OpenAI-compatible chat-completions server for tests, demos and dry-runs."""

from autoannotator.mockllm.server import FAULT_KINDS, Gold, MockLLM, load_gold

__all__ = ["FAULT_KINDS", "Gold", "MockLLM", "load_gold"]
