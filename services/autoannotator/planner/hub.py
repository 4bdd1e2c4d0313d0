"""Candidates from the Hugging Face Hub API (``--hub``) and ``catalog refresh``.

Only public facts are taken: the model's pipeline tag, ``config.json`` ``id2label``, downloads,
licence tag, parameter count (safetensors metadata) and architecture. Anything the hub does not
report stays ``null``. When the hub cannot be reached the error says so plainly; nothing falls back
silently to stale data.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from autoannotator.planner.catalog import ModelCard
from autoannotator.planner.exceptions import HubUnreachable

log = logging.getLogger(__name__)

EXPAND = ["config", "cardData", "downloads", "safetensors", "pipeline_tag", "tags"]


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _unreachable(exc: Exception) -> HubUnreachable:
    return HubUnreachable(
        f"the Hugging Face Hub API at {_endpoint()} cannot be reached ({type(exc).__name__}: {exc}); "
        "plan without --hub to use the shipped catalog, or set HF_ENDPOINT to a reachable mirror"
    )


def _api() -> Any:
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise HubUnreachable("--hub needs the package huggingface_hub (pip install huggingface_hub)") from None
    return HfApi(endpoint=_endpoint())


def _network_errors() -> tuple[type[BaseException], ...]:
    import requests
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    return (requests.exceptions.RequestException, OfflineModeIsEnabled, HfHubHTTPError, OSError)


def card_from_info(info: Any, previous: ModelCard | None = None) -> ModelCard:
    """A catalog entry from a ``huggingface_hub`` ModelInfo; figures the hub omits keep the previous value."""
    config = getattr(info, "config", None) or {}
    card_data = getattr(info, "card_data", None) or getattr(info, "cardData", None) or {}
    id2label = config.get("id2label") if isinstance(config, dict) else None
    labels = None
    if isinstance(id2label, dict) and id2label:
        labels = [str(id2label[key]) for key in sorted(id2label, key=lambda key: int(key))]
    licence = card_data.get("license") if hasattr(card_data, "get") else None
    safetensors = getattr(info, "safetensors", None)
    parameters = getattr(safetensors, "total", None) if safetensors else None
    architecture = config.get("model_type") if isinstance(config, dict) else None
    description = previous.description if previous else (
        f"{info.id}: {getattr(info, 'pipeline_tag', None) or 'text-classification'} model, labels "
        + (", ".join(labels) if labels else "unknown")
    )
    keep = previous or ModelCard(id=info.id, description=description)
    meanings = {k: v for k, v in keep.label_meanings.items() if labels is None or k in labels}
    return ModelCard(
        id=info.id,
        description=description,
        pipeline_tag=getattr(info, "pipeline_tag", None) or keep.pipeline_tag,
        labels=labels if labels is not None else keep.labels,
        label_meanings=meanings,
        downloads=getattr(info, "downloads", None) if getattr(info, "downloads", None) is not None else keep.downloads,
        parameters=parameters if parameters is not None else keep.parameters,
        licence=str(licence) if isinstance(licence, str) else keep.licence,
        architecture=architecture or keep.architecture,
        base_model=keep.base_model,
    )


def hub_candidates(search: str | None, limit: int = 50) -> list[ModelCard]:
    """The most downloaded text-classification models on the hub (matching ``search`` when given)."""
    api = _api()
    try:
        infos = list(api.list_models(
            pipeline_tag="text-classification", search=search or None, sort="downloads", limit=limit, expand=EXPAND
        ))
    except _network_errors() as exc:
        raise _unreachable(exc) from None
    return [card_from_info(info) for info in infos]


def refresh_cards(cards: list[ModelCard], add_top: int = 0) -> list[ModelCard]:
    """``cards`` with figures refreshed from the hub, plus the ``add_top`` most downloaded ones not yet listed."""
    api = _api()
    refreshed = []
    try:
        for card in cards:
            info = api.model_info(card.id, expand=EXPAND)
            refreshed.append(card_from_info(info, card))
        known = {card.id for card in refreshed}
        if add_top:
            for info in api.list_models(pipeline_tag="text-classification", sort="downloads", limit=add_top * 2,
                                        expand=EXPAND):
                if info.id not in known and len(refreshed) < len(cards) + add_top:
                    refreshed.append(card_from_info(info))
    except _network_errors() as exc:
        raise _unreachable(exc) from None
    return refreshed


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """Whether the Hub answers within ``timeout_s`` (False offline, under HF_HUB_OFFLINE, or behind a firewall)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{_endpoint()}/api/models?limit=1", timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
