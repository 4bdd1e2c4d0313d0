"""``calibrate``'s library: run the specialists over a labelled set, fit temperatures, solve ``tau``.

The math is :mod:`autoannotator.calibration`; this module adds what needs the pipeline: each
specialist's probabilities through its serving engine (:func:`specialist_probabilities`), the
report, and writing the result into the config file.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import yaml

from autoannotator.calibration import (
    Operating,
    fit_temperature,
    mean_probs,
    nll,
    operating_point,
    read_labelled_csv,
    scale,
    solve_tau_for_call_rate,
    solve_tau_for_error,
)
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.exceptions import CalibrationError

log = logging.getLogger(__name__)


def calibrate_file(config: PipelineConfig, data: Path, artifact_pairs: list[str], *,
                   call_rate: float | None = None, error: float | None = None) -> tuple[Calibration, str]:
    """Run every configured specialist over a labelled CSV and calibrate; returns the result and its report.

    ``artifact_pairs`` (``NAME=DIR``) use local artifacts instead of the store's current versions.
    """
    if not config.specialists:
        raise CalibrationError("specialists: calibration needs at least one configured specialist")
    texts, targets = read_labelled_csv(data, config.task.labels)
    artifacts = parse_artifacts(artifact_pairs, config)
    scored = [specialist_scores(config, spec.name, texts, artifacts.get(spec.name)) for spec in config.specialists]
    per_specialist = [probs for probs, _ in scored]
    versions = {spec.name: version for spec, (_, version) in zip(config.specialists, scored, strict=True)}
    result = calibrate(config, per_specialist, targets, call_rate=call_rate, error=error, versions=versions)
    return result, format_report(config, per_specialist, targets, result)


class Calibration:
    """Fitted temperatures per specialist and the solved operating point."""

    def __init__(self, temperatures: dict[str, float], point: Operating, before: Operating,
                 versions: dict[str, str] | None = None) -> None:
        self.temperatures = temperatures
        self.point = point
        # The same target reached with uncalibrated probabilities, for comparison.
        self.before = before
        # The model version each temperature was fitted for (a temperature never crosses versions).
        self.versions = dict(versions or {})

    def per_version(self) -> dict[str, dict[str, float]]:
        """``voter.temperatures`` as the config holds them: ``{specialist: {version: T}}``."""
        missing = sorted(set(self.temperatures) - set(self.versions))
        if missing:
            raise CalibrationError(f"no model version known for {missing}: cannot tie their temperatures to a version")
        return {name: {self.versions[name]: t} for name, t in self.temperatures.items()}


def calibrate(config: PipelineConfig, per_specialist: list[np.ndarray], targets: np.ndarray, *,
              call_rate: float | None = None, error: float | None = None,
              versions: dict[str, str] | None = None) -> Calibration:
    """Fit a temperature per specialist and solve tau for exactly one of the two targets."""
    if (call_rate is None) == (error is None):
        raise CalibrationError("give exactly one of --target-call-rate and --target-error")
    names = [spec.name for spec in config.specialists]
    temperatures = {name: round(fit_temperature(p, targets), 4) for name, p in zip(names, per_specialist, strict=True)}
    calibrated = mean_probs(per_specialist, [temperatures[n] for n in names])
    raw = mean_probs(per_specialist, [1.0] * len(names))

    def solve(mean: np.ndarray) -> Operating:
        if call_rate is not None:
            return solve_tau_for_call_rate(mean, targets, call_rate)
        assert error is not None
        return solve_tau_for_error(mean, targets, error)

    point = solve(calibrated)
    try:
        before = solve(raw)
    except CalibrationError:
        before = operating_point(raw, targets, 1.0)
    return Calibration(temperatures, point, before, versions)


def format_report(config: PipelineConfig, per_specialist: list[np.ndarray], targets: np.ndarray,
                  result: Calibration) -> str:
    """A printable table: per-specialist accuracy/NLL, temperatures, and the operating point."""
    lines = [f"calibration set: {len(targets)} records", "",
             f"{'specialist':<20} {'accuracy':>9} {'NLL raw':>9} {'T':>8} {'NLL cal':>9}"]
    for spec, probs in zip(config.specialists, per_specialist, strict=True):
        t = result.temperatures[spec.name]
        accuracy = float((probs.argmax(axis=1) == targets).mean())
        lines.append(f"{spec.name:<20} {accuracy:>9.4f} {nll(probs, targets):>9.4f} {t:>8.4f} "
                     f"{nll(scale(probs, t), targets):>9.4f}")
    lines.append("")
    for name, point in (("calibrated", result.point), ("uncalibrated", result.before)):
        accuracy = "n/a" if math.isnan(point.accuracy) else f"{point.accuracy:.4f}"
        lines.append(f"{name:<13} tau={point.tau:.4f} hard-routing rate={point.call_rate:.4f} "
                     f"accepted-label accuracy={accuracy} accepted={point.accepted}/{point.total}")
    return "\n".join(lines)


def write_calibration(path: Path, result: Calibration) -> str:
    """Write per-version ``temperatures`` and ``tau`` into the config file, keeping the rest; returns the policy.

    An ``error-bounded`` config keeps its policy (the temperatures sharpen its scores; its threshold
    comes from the audit stream); any other becomes ``soft`` at the solved ``tau``.
    """
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    current = parse_config(doc, str(path)).voter.policy
    voter = doc.setdefault("voter", {}) or {}
    doc["voter"] = voter
    if current != "error-bounded":
        voter["policy"] = "soft"
    voter["tau"] = round(float(result.point.tau), 6)
    voter["temperatures"] = result.per_version()
    parse_config(doc, str(path))  # never write a config that would not load
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return voter.get("policy", current)


def parse_artifacts(pairs: list[str], config: PipelineConfig) -> dict[str, Path]:
    """``NAME=DIR`` pairs -> artifact folder per configured specialist name."""
    names = {spec.name for spec in config.specialists}
    out: dict[str, Path] = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or name not in names:
            raise CalibrationError(f"--artifact {pair!r}: expected NAME=DIR with NAME one of {sorted(names)}")
        out[name] = Path(folder)
    return out


def specialist_probabilities(config: PipelineConfig, name: str, texts: list[str], artifact: Path | None
                             ) -> np.ndarray:
    """Task-order probabilities of one configured specialist over ``texts`` (ONNX Runtime)."""
    return specialist_scores(config, name, texts, artifact)[0]


def specialist_scores(config: PipelineConfig, name: str, texts: list[str], artifact: Path | None
                      ) -> tuple[np.ndarray, str]:
    """Task-order probabilities of one configured specialist over ``texts``, and the model version that gave them."""
    # Imported here: the engine pulls in onnxruntime and tokenizers, which the voter itself never needs.
    from autoannotator.artifacts.engine import serving_engine

    spec = config.specialist(name)
    if artifact is None:
        artifact = _fetch_current(config, name)
    engine = serving_engine(config, name, artifact)
    log.info("calibrate: %s version %s over %d texts", name, engine.version, len(texts))
    probs = engine.predict(texts, max_batch_tokens=spec.max_batch_tokens, max_batch_size=spec.max_batch_size)
    return np.asarray(probs, dtype=np.float64), engine.version


def _fetch_current(config: PipelineConfig, name: str) -> Path:
    """Fetch the specialist's current version from the model store (what it serves) into the data directory."""
    from autoannotator.artifacts.exceptions import ModelStoreError
    from autoannotator.artifacts.store import store_for

    try:
        store = store_for(config)
        version = store.current(name)
        if version is None:
            raise CalibrationError(f"specialists.{name}: the model store {config.store.uri} has no current version "
                                   "of it (add one with `autoannotator models add`, or pass --artifact NAME=DIR)")
        dest = Path(config.data_dir) / "calibrate" / name / version
        return store.fetch(name, version, dest, weights=False)
    except ModelStoreError as exc:
        raise CalibrationError(f"specialists.{name}: cannot fetch from the model store: {exc}") from exc
