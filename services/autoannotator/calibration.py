"""Calibration math for soft routing: one temperature per specialist, then ``tau`` for a target.

Shared by the voter's ``calibrate`` command (:mod:`autoannotator.voter.calibrate`), the trainer
and the demo. All math is over numpy arrays, independent of models and services:

- :func:`fit_temperature` minimises the negative log-likelihood of ``softmax(log p / T)`` over a
  labelled set. The NLL is convex in ``1/T`` (a log-sum-exp of a linear function), so a
  golden-section search over ``log T`` finds the optimum without a gradient.
- :func:`solve_tau_for_call_rate` / :func:`solve_tau_for_error` pick ``tau`` on the calibrated
  mean probabilities, using exactly the routing rule of :func:`~autoannotator.voter.routing.soft`
  (accept when the top mean is ``>= tau`` and not tied).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoannotator.exceptions import CalibrationError

# Temperatures searched: wide enough for any sane model, narrow enough to stay finite.
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))
_GOLDEN = (math.sqrt(5) - 1) / 2


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise over an ``(n, labels)`` array (zeros stay zero)."""
    logp = np.log(np.clip(probs, 1e-30, None)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    exp = np.exp(logp)
    exp[probs <= 0] = 0.0
    return exp / exp.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of ``targets`` (label indices) under ``probs``."""
    picked = probs[np.arange(len(targets)), targets]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def fit_temperature(probs: np.ndarray, targets: np.ndarray, *, tolerance: float = 1e-4) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(log p / T)`` on a labelled set."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    _check_set(probs, targets)
    logp = np.log(np.clip(probs, 1e-30, None))
    rows = np.arange(len(targets))

    def loss(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z_max = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - z_max).sum(axis=1)) + z_max[:, 0]
        return float((lse - z[rows, targets]).mean())

    lo, hi = _LOG_T_RANGE
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tolerance:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


def mean_probs(per_specialist: Sequence[np.ndarray], temperatures: Sequence[float]) -> np.ndarray:
    """Mean of the specialists' temperature-scaled probabilities (what soft routing averages)."""
    if not per_specialist:
        raise CalibrationError("no specialists to average")
    return np.mean([scale(np.asarray(p, dtype=np.float64), t) for p, t in zip(per_specialist, temperatures,
                                                                                strict=True)], axis=0)


@dataclass(frozen=True, slots=True)
class Operating:
    """What soft routing does on the calibration set at one ``tau``."""

    tau: float
    call_rate: float  # share routed to hard
    accuracy: float  # accuracy of the accepted labels (nan when nothing is accepted)
    accepted: int
    total: int


def _top(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top mean probability, its index, and whether the top is tied (never accepted)."""
    order = np.sort(mean, axis=1)
    top = order[:, -1]
    tied = order[:, -2] == top
    return top, mean.argmax(axis=1), tied


def operating_point(mean: np.ndarray, targets: np.ndarray, tau: float) -> Operating:
    """Call rate and accepted-label accuracy of soft routing at ``tau``."""
    top, predicted, tied = _top(mean)
    accepted = (top >= tau) & ~tied
    n_acc = int(accepted.sum())
    accuracy = float((predicted[accepted] == targets[accepted]).mean()) if n_acc else float("nan")
    return Operating(tau, 1.0 - n_acc / len(targets), accuracy, n_acc, len(targets))


def solve_tau_for_call_rate(mean: np.ndarray, targets: np.ndarray, rate: float) -> Operating:
    """The ``tau`` whose hard-routing rate is closest to ``rate`` (ties: the lower rate)."""
    if not 0.0 <= rate <= 1.0:
        raise CalibrationError(f"--target-call-rate must be within [0, 1], got {rate}")
    top, _, tied = _top(mean)
    untied = np.sort(top[~tied])
    candidates = np.unique(np.append(untied, 1.0))
    # Records accepted at each candidate tau: untied tops >= tau.
    accepted = len(untied) - np.searchsorted(untied, candidates, side="left")
    rates = 1.0 - accepted / len(targets)
    best = int(np.argmin(np.abs(rates - rate)))  # argmin takes the first: the lowest tau on a tie
    return operating_point(mean, targets, float(candidates[best]))


def solve_tau_for_error(mean: np.ndarray, targets: np.ndarray, error: float) -> Operating:
    """The lowest ``tau`` (fewest LLM calls) whose accepted labels err at most ``error``."""
    if not 0.0 <= error < 1.0:
        raise CalibrationError(f"--target-error must be within [0, 1), got {error}")
    top, predicted, tied = _top(mean)
    correct = predicted == targets
    # Accepting every untied record with top >= t: sweep t down the sorted distinct values.
    keep = ~tied
    conf, right = top[keep], correct[keep]
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], right[order]
    errors = np.cumsum(~right)
    counts = np.arange(1, len(conf) + 1)
    # Only thresholds at the last of a run of equal confidences are realisable.
    last_of_run = np.append(conf[1:] != conf[:-1], True)
    ok = last_of_run & (errors / counts <= error + 1e-12)
    if not ok.any():
        best = float((errors / counts)[last_of_run].min()) if len(conf) else float("nan")
        raise CalibrationError(
            f"--target-error {error} is unreachable on this set: the best accepted-label error is {best:.4f}"
        )
    idx = int(np.flatnonzero(ok)[-1])
    return operating_point(mean, targets, float(conf[idx]))


def read_labelled_csv(path: Path, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Texts and label indices from a CSV with ``text`` and ``label`` columns (errors name the row)."""
    index = {label: i for i, label in enumerate(labels)}
    texts: list[str] = []
    targets: list[int] = []
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = {"text", "label"} - set(reader.fieldnames or [])
        if missing:
            raise CalibrationError(f"{path}: missing column(s) {sorted(missing)}; need text,label")
        for line, row in enumerate(reader, start=2):
            label = (row["label"] or "").strip()
            if label not in index:
                raise CalibrationError(f"{path}:{line}: label {label!r} is not one of task.labels {list(labels)}")
            text = row["text"] or ""
            if not text.strip():
                raise CalibrationError(f"{path}:{line}: empty text")
            texts.append(text)
            targets.append(index[label])
    if not texts:
        raise CalibrationError(f"{path}: no rows")
    return texts, np.asarray(targets, dtype=np.int64)


def _check_set(probs: np.ndarray, targets: np.ndarray) -> None:
    if probs.ndim != 2 or len(probs) != len(targets) or len(targets) == 0:
        raise CalibrationError(f"need an (n, labels) probability array and n targets, got {probs.shape} and "
                               f"{targets.shape}")
    if targets.min() < 0 or targets.max() >= probs.shape[1]:
        raise CalibrationError("targets outside the label range")
