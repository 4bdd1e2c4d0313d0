"""Fine-tuning a specialist's current weights on reviewed samples (transformers + torch).

Cross-entropy over the model's own labels, AdamW with the paper's defaults (lr 2e-5, weight
decay 0.01, 3 epochs). Reviewed labels are *task* labels; each is mapped to the model's own
label id through the inverse of the specialist's ``label_map`` (model label -> task label), so
a model whose ``id2label`` is ``{0: "NEG", 1: "POS", 2: "NEU"}`` is trained towards its own
logits, never towards raw task indices (a defect of the paper's code).

Device: CUDA with mixed precision (autocast) when a GPU is present and allowed, else the CPU
with a capped number of torch threads, so that the specialists' inference keeps most cores.
The device used is in the report (the trainer logs it and exports it as a metric).
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoannotator.trainer.exceptions import FineTuneError, LabelMappingError, RoundCancelled

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


@dataclass(frozen=True, slots=True)
class FineTuneSettings:
    """Hyper-parameters of one fine-tuning run."""

    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    epochs: int = 3
    batch_size: int = 16
    max_steps: int | None = None
    max_length: int = 128
    seed: int = 0
    # auto | cpu | cuda; mixed precision applies on CUDA only; threads caps torch on CPU (0: half the cores).
    device: str = "auto"
    mixed_precision: bool = True
    threads: int = 0


@dataclass(frozen=True, slots=True)
class FineTuneReport:
    """What a run did."""

    steps: int
    examples: int
    first_loss: float
    last_loss: float
    seconds: float
    device: str = "cpu"


def choose_device(requested: str) -> str:
    """``cuda`` when requested or (auto) when torch sees a GPU; else ``cpu``. An explicit cuda without one fails."""
    import torch

    if requested == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise FineTuneError("trainer.device is cuda but torch sees no CUDA device")
    return "cuda" if available else "cpu"


def cpu_threads(requested: int) -> int:
    """Torch threads for CPU fine-tuning: the configured cap, or half the cores (at least 1)."""
    return requested if requested > 0 else max(1, (os.cpu_count() or 2) // 2)


def task_to_model_ids(
    model_labels: Sequence[str], label_map: Mapping[str, str], task_labels: Sequence[str]
) -> dict[str, int]:
    """Task label -> the model's label id, by inverting ``label_map`` (model label -> task label).

    An empty ``label_map`` means the model's labels are the task's labels. A task label that no
    model label maps onto, or that several do, cannot be trained towards without guessing:
    :class:`LabelMappingError` names it.
    """
    mapping = dict(label_map) or {label: label for label in model_labels}
    unknown = set(mapping) - set(model_labels)
    if unknown:
        raise LabelMappingError(f"label_map names labels the model does not have: {sorted(unknown)}")
    result: dict[str, int] = {}
    for task_label in task_labels:
        ids = [i for i, label in enumerate(model_labels) if mapping.get(label) == task_label]
        if not ids:
            raise LabelMappingError(f"task label {task_label!r} has no model label mapped onto it ({mapping})")
        if len(ids) > 1:
            names = [model_labels[i] for i in ids]
            raise LabelMappingError(f"task label {task_label!r} is the image of several model labels {names}")
        result[task_label] = ids[0]
    return result


def _tokenizer_dir(weights_dir: Path, tokenizer_dir: Path | None) -> Path:
    if any((weights_dir / name).is_file() for name in _TOKENIZER_FILES):
        return weights_dir
    if tokenizer_dir is not None and tokenizer_dir.is_dir():
        return tokenizer_dir
    raise FineTuneError(f"cannot load a tokenizer: none in {weights_dir} or {tokenizer_dir}")


def fine_tune(
    weights_dir: str | Path,
    out_dir: str | Path,
    texts: Sequence[str],
    task_labels_of_texts: Sequence[str],
    *,
    task_labels: Sequence[str],
    label_map: Mapping[str, str],
    settings: FineTuneSettings,
    tokenizer_dir: str | Path | None = None,
    cancel: threading.Event | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FineTuneReport:
    """Fine-tune the Hugging Face classifier in ``weights_dir``; save the result (model + tokenizer) in ``out_dir``.

    Raises :class:`FineTuneError` (with the cause) on any failure, :class:`LabelMappingError` when
    a label cannot be mapped, :class:`RoundCancelled` when ``cancel`` is set between steps.
    """
    if len(texts) != len(task_labels_of_texts):
        raise FineTuneError(f"{len(texts)} texts but {len(task_labels_of_texts)} labels")
    if not texts:
        raise FineTuneError("no training samples")
    started = time.perf_counter()
    weights_dir = Path(weights_dir)
    try:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok_dir = _tokenizer_dir(weights_dir, Path(tokenizer_dir) if tokenizer_dir else None)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        model = AutoModelForSequenceClassification.from_pretrained(weights_dir)
    except (OSError, ValueError, ImportError) as exc:
        raise FineTuneError(f"cannot load the model to fine-tune from {weights_dir}: {exc}") from exc
    device = choose_device(settings.device)
    if device == "cpu":
        torch.set_num_threads(cpu_threads(settings.threads))
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise FineTuneError(f"cannot move the model to {device}: {exc}") from exc
    amp_dtype = None
    if device == "cuda" and settings.mixed_precision:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    log.info("fine-tuning on %s%s", device, f" with {amp_dtype} autocast" if amp_dtype else
             f" with {torch.get_num_threads()} threads" if device == "cpu" else "")
    id2label = model.config.id2label
    model_labels = [str(id2label[i]) for i in range(len(id2label))]
    to_id = task_to_model_ids(model_labels, label_map, task_labels)
    stray = sorted(set(task_labels_of_texts) - set(to_id))
    if stray:
        raise LabelMappingError(f"reviewed labels not in the task's labels: {stray}")
    targets = [to_id[label] for label in task_labels_of_texts]

    per_epoch = math.ceil(len(texts) / settings.batch_size)
    steps = settings.epochs * per_epoch
    if settings.max_steps is not None:
        steps = min(steps, settings.max_steps)
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    order: list[int] = []
    first_loss = last_loss = float("nan")
    model.train()
    try:
        for step in range(steps):
            if cancel is not None and cancel.is_set():
                raise RoundCancelled(f"fine-tuning stopped at step {step} of {steps}")
            if len(order) < settings.batch_size:
                # Epoch boundary: a fresh shuffle; the tail of the previous epoch is used first.
                fresh = list(range(len(texts)))
                rng.shuffle(fresh)
                order.extend(fresh)
            batch, order = order[: settings.batch_size], order[settings.batch_size :]
            enc = tokenizer(
                [texts[i] for i in batch],
                padding=True,
                truncation=True,
                max_length=settings.max_length,
                return_tensors="pt",
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            labels = torch.tensor([targets[i] for i in batch], device=device)
            with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = model(**enc, labels=labels).loss
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FineTuneError(f"loss is {value} at step {step}")
            optimiser.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
            else:
                loss.backward()
                optimiser.step()
            if step == 0:
                first_loss = value
            last_loss = value
            if on_step is not None:
                on_step(step, value)
        model.eval()
        model.to("cpu")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    except (RoundCancelled, FineTuneError):
        raise
    except (RuntimeError, OSError, ValueError) as exc:
        raise FineTuneError(f"fine-tuning failed: {exc}") from exc
    seconds = time.perf_counter() - started
    log.info("fine-tuned %d steps on %d examples in %.1fs on %s (loss %.4f -> %.4f)", steps, len(texts), seconds,
             device, first_loss, last_loss)
    return FineTuneReport(steps, len(texts), first_loss, last_loss, seconds, device)
