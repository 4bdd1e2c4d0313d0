"""The meta-controller: pick k small classifiers for a task, map their labels, write the pipeline config.

The paper's upper layer (DESIGN.md, "Meta-controller"): models from a shipped :mod:`catalog` (or the
Hugging Face Hub with ``--hub``) are ranked by embedding similarity between the task description and
each model's description (:mod:`rank`), their own labels are mapped onto the task's (:mod:`labelmap`),
and :mod:`plan` turns the choice into a validated :class:`~autoannotator.config.PipelineConfig`.
"""
