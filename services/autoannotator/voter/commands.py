"""Sub-commands ``voter`` (the service) and ``calibrate`` (temperatures and ``tau`` for soft routing)."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import yaml

from autoannotator.config import PipelineConfig, parse_config
from autoannotator.runtime import add_service_args, load, serve
from autoannotator.voter.calibrate import (
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
from autoannotator.voter.exceptions import CalibrationError
from autoannotator.voter.service import Voter

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``voter`` and ``calibrate``."""
    p = subparsers.add_parser("voter", help="join the specialists' predictions and route each record once")
    add_service_args(p)
    p.set_defaults(func=cmd_voter)

    p = subparsers.add_parser(
        "calibrate", help="fit per-specialist temperatures and solve tau for soft routing on a labelled CSV"
    )
    p.add_argument("--config", required=True, type=Path, help="pipeline config (YAML)")
    p.add_argument("--data", required=True, type=Path, help="CSV with text,label columns")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-call-rate", type=float, help="share of records routed to review (0..1)")
    target.add_argument("--target-error", type=float, help="highest error of accepted labels (0..1)")
    p.add_argument("--artifact", action="append", default=[], metavar="NAME=DIR",
                   help="use this local artifact for a specialist instead of the model store (repeatable)")
    p.add_argument("--write", action="store_true", help="write policy soft, temperatures and tau into the config")
    p.set_defaults(func=cmd_calibrate)


def cmd_voter(args: argparse.Namespace) -> int:
    """Run the voter service until stopped."""
    config = load(args)
    serve(config, "voter", Voter(config), args)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run the specialists over a labelled file, fit temperatures, solve tau, print (and write) them."""
    config = load(args)
    if not config.specialists:
        raise CalibrationError("specialists: calibration needs at least one configured specialist")
    texts, targets = read_labelled_csv(args.data, config.task.labels)
    artifacts = _parse_artifacts(args.artifact, config)
    per_specialist = [specialist_probabilities(config, spec.name, texts, artifacts.get(spec.name))
                      for spec in config.specialists]
    result = calibrate(config, per_specialist, targets, call_rate=args.target_call_rate, error=args.target_error)
    print(format_report(config, per_specialist, targets, result))
    if args.write:
        write_calibration(args.config, result)
        print(f"wrote voter.policy=soft, voter.tau and voter.temperatures to {args.config}")
    return 0


class Calibration:
    """Fitted temperatures per specialist and the solved operating point."""

    def __init__(self, temperatures: dict[str, float], point: Operating, before: Operating) -> None:
        self.temperatures = temperatures
        self.point = point
        # The same target reached with uncalibrated probabilities, for comparison.
        self.before = before


def calibrate(config: PipelineConfig, per_specialist: list[np.ndarray], targets: np.ndarray, *,
              call_rate: float | None = None, error: float | None = None) -> Calibration:
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
    return Calibration(temperatures, point, before)


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


def write_calibration(path: Path, result: Calibration) -> None:
    """Set ``voter.policy: soft``, ``tau`` and ``temperatures`` in the config file, keeping the rest."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    voter = doc.setdefault("voter", {}) or {}
    doc["voter"] = voter
    voter["policy"] = "soft"
    voter["tau"] = round(float(result.point.tau), 6)
    voter["temperatures"] = dict(result.temperatures)
    parse_config(doc, str(path))  # never write a config that would not load
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _parse_artifacts(pairs: list[str], config: PipelineConfig) -> dict[str, Path]:
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
    # Imported here: the engine pulls in onnxruntime and tokenizers, which the voter itself never needs.
    from autoannotator.artifacts.engine import serving_engine

    spec = config.specialist(name)
    if artifact is None:
        artifact = _fetch_current(config, name)
    engine = serving_engine(config, name, artifact)
    log.info("calibrate: %s version %s over %d texts", name, engine.version, len(texts))
    return np.asarray(engine.predict(texts, max_batch_tokens=spec.max_batch_tokens,
                                     max_batch_size=spec.max_batch_size), dtype=np.float64)


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
