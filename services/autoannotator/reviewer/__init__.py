"""The reviewer: hard records get a label from an LLM (batched, budgeted, cached) or a person.

Layers: :mod:`.prompt` (what the LLM is told), :mod:`.llm` (the OpenAI-compatible client:
retries, breaker, label validation), :mod:`.cache` and :mod:`.budget` (what a label costs and
whether we may spend more), :mod:`.human` (the review page and its durable queue),
:mod:`.service` (the :class:`~.service.Reviewer` processor that ties them to the loop).
"""
