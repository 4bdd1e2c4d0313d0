"""Named errors of the meta-controller."""

from __future__ import annotations

from autoannotator.exceptions import AutoAnnotatorError


class PlannerError(AutoAnnotatorError):
    """Base of every error the planner raises on purpose."""


class CatalogError(PlannerError):
    """The model catalog is unreadable or one of its entries is malformed; the message names the entry."""


class HubUnreachable(PlannerError):
    """The Hugging Face Hub API cannot be reached (offline, DNS, proxy, HF_HUB_OFFLINE)."""


class EmbeddingError(PlannerError):
    """Texts could not be embedded (encoder missing or the embeddings endpoint failed)."""


class ProposalError(PlannerError):
    """A proposed label mapping is invalid (an override names an unknown label) or the LLM's answer is unusable.

    (The artifact layer's :class:`~autoannotator.artifacts.exceptions.LabelMapError` is the other
    case: a model's labels that cannot be mapped onto the task's at all.)
    """


class UnmappedLabels(PlannerError):
    """A config was requested while some chosen model's labels have no task label; never guessed."""
