"""Calibration math on synthetic data: temperatures, tau for a call rate or an error, config write-back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from autoannotator.calibration import (
    fit_temperature,
    mean_probs,
    nll,
    operating_point,
    read_labelled_csv,
    scale,
    solve_tau_for_call_rate,
    solve_tau_for_error,
)
from autoannotator.config import PipelineConfig, load_config
from autoannotator.exceptions import CalibrationError
from autoannotator.voter.calibrate import calibrate, write_calibration
from autoannotator.voter.routing import Router
from autoannotator.wire import Prediction, PredictionStatus


def synthetic(n: int, labels: int, sharpness: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the 'model' reports softmax(sharpness * z): over-confident when > 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, size=(n, labels))
    true = np.exp(z - z.max(axis=1, keepdims=True))
    true /= true.sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(labels, p=row) for row in true])
    reported = np.exp(sharpness * (z - z.max(axis=1, keepdims=True)))
    reported /= reported.sum(axis=1, keepdims=True)
    return reported, targets


def test_fit_temperature_recovers_a_known_over_confidence() -> None:
    probs, targets = synthetic(4000, 3, sharpness=2.5, seed=1)
    temperature = fit_temperature(probs, targets)
    assert temperature == pytest.approx(2.5, rel=0.1)
    assert nll(scale(probs, temperature), targets) < nll(probs, targets)


def test_fit_temperature_leaves_a_calibrated_model_near_one() -> None:
    probs, targets = synthetic(4000, 3, sharpness=1.0, seed=2)
    assert fit_temperature(probs, targets) == pytest.approx(1.0, rel=0.1)


def test_numpy_scaling_matches_the_routers_scaling() -> None:
    probs, _ = synthetic(50, 3, sharpness=2.0, seed=3)
    router = Router(["a", "b", "c"], ["s1"], policy="soft", tau=0.0, quorum=1,
                    temperature=lambda name, version: 1.7 if (name, version) == ("s1", "v1") else 1.0)
    for row in probs:
        decision = router.decide([Prediction(specialist="s1", model_version="v1", probs=row.tolist(),
                                             status=PredictionStatus.PREDICTION_STATUS_OK)])
        assert decision.confidence == pytest.approx(scale(row[None, :], 1.7).max(), abs=1e-6)


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_tau_for_a_call_rate_hits_the_target(rate: float) -> None:
    per = [synthetic(2000, 3, sharpness=s, seed=10)[0] for s in (1.5, 2.0, 3.0)]
    targets = synthetic(2000, 3, sharpness=1.0, seed=10)[1]
    mean = mean_probs(per, [1.0, 1.0, 1.0])
    point = solve_tau_for_call_rate(mean, targets, rate)
    assert point.call_rate == pytest.approx(rate, abs=2 / len(targets))
    # The same tau, applied by the routing rule, sends that share to hard.
    assert operating_point(mean, targets, point.tau).call_rate == point.call_rate


def test_tau_for_a_target_error_keeps_accepted_error_under_it_with_fewest_calls() -> None:
    probs, targets = synthetic(3000, 3, sharpness=1.0, seed=4)
    point = solve_tau_for_error(probs, targets, 0.1)
    assert 1 - point.accuracy <= 0.1
    # Any lower tau (the next lower confidence) would accept more and break the target.
    top = np.sort(probs.max(axis=1))
    lower = top[top < point.tau].max()
    assert 1 - operating_point(probs, targets, float(lower)).accuracy > 0.1


def test_unreachable_target_error_is_a_named_error() -> None:
    rng = np.random.default_rng(5)
    probs = rng.dirichlet([1, 1, 1], size=300)
    targets = (probs.argmax(axis=1) + 1) % 3  # the model is always wrong
    with pytest.raises(CalibrationError, match="unreachable"):
        solve_tau_for_error(probs, targets, 0.05)


def test_csv_with_an_unknown_label_names_the_row(tmp_path: Path) -> None:
    data = tmp_path / "set.csv"
    data.write_text("text,label\ngood,positive\nmeh,sideways\n", encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"set.csv:3: label 'sideways'"):
        read_labelled_csv(data, ["negative", "neutral", "positive"])


def test_calibration_is_written_into_the_config_as_soft_policy(
    make_config: Callable[..., PipelineConfig], tmp_path: Path
) -> None:
    config = make_config(create=False, specialists=[{"name": "s1"}, {"name": "s2"}])
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"task": config.task.model_dump(), "voter": {"policy": "vote"},
                                    "specialists": [{"name": "s1"}, {"name": "s2"}]}))
    per = [synthetic(1500, 3, sharpness=s, seed=6)[0] for s in (2.0, 0.7)]
    targets = synthetic(1500, 3, sharpness=1.0, seed=6)[1]
    result = calibrate(config, per, targets, call_rate=0.2, versions={"s1": "v3", "s2": "v1"})
    write_calibration(path, result)
    written = load_config(path)
    assert written.voter.policy == "soft"
    assert written.voter.tau == pytest.approx(result.point.tau, abs=1e-6)
    # Per model version: the temperature is tied to the version it was fitted for.
    assert set(written.voter.temperatures["s1"]) == {"v3"}
    assert written.voter.temperatures["s1"]["v3"] == pytest.approx(2.0, rel=0.15)
    assert written.voter.temperatures["s2"]["v1"] == pytest.approx(0.7, rel=0.15)


def test_calibration_keeps_an_error_bounded_policy_and_refuses_versionless_temperatures(
    make_config: Callable[..., PipelineConfig], tmp_path: Path
) -> None:
    config = make_config(create=False, specialists=[{"name": "s1"}], voter={"quorum": 1})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"task": config.task.model_dump(), "specialists": [{"name": "s1"}],
                                    "voter": {"quorum": 1}}))
    probs, targets = synthetic(800, 3, sharpness=2.0, seed=8)
    write_calibration(path, calibrate(config, [probs], targets, call_rate=0.2, versions={"s1": "v1"}))
    written = load_config(path)
    assert written.voter.policy == "error-bounded"  # the default: its threshold comes from the audit stream
    assert list(written.voter.temperatures["s1"]) == ["v1"]
    with pytest.raises(CalibrationError, match="no model version"):
        calibrate(config, [probs], targets, call_rate=0.2).per_version()


def test_calibrate_command_runs_the_stored_specialists_and_writes_the_config(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoannotator.artifacts.store import ModelStore
    from autoannotator.cli import main

    store_uri = f"file://{tmp_path / 'store'}"
    store = ModelStore(store_uri)
    for name in ("s1", "s2"):
        manifest = store.publish(name, tiny_artifact)
        store.set_current(name, manifest.version)
    labels = ["negative", "neutral", "positive"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "task": {"name": "t", "labels": labels},
        "store": {"uri": store_uri},
        "data_dir": str(tmp_path / "data"),
        "specialists": [{"name": "s1"}, {"name": "s2"}],
        "voter": {"policy": "vote"},
    }))
    rng = np.random.default_rng(7)
    words = ["great", "awful", "fine", "late", "lost", "thanks", "delayed", "ok", "love", "hate"]
    rows = [(" ".join(rng.choice(words, size=5)), labels[i % 3]) for i in range(40)]
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))

    code = main(["calibrate", "--config", str(path), "--data", str(data), "--target-call-rate", "0.25", "--write"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "calibration set: 40 records" in out
    written = load_config(path)
    assert written.voter.policy == "soft"
    assert set(written.voter.temperatures) == {"s1", "s2"}
    versions = {name: store.current(name) for name in ("s1", "s2")}
    assert {name: list(t) for name, t in written.voter.temperatures.items()} == {n: [v] for n, v in versions.items()}
    [line] = [line for line in out.splitlines() if line.startswith("calibrated")]
    assert f"tau={written.voter.tau:.4f}" in line
