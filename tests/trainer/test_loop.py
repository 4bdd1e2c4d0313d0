"""The learning loop: what a round trains on, what the gate lets through, and that the stream never waits.

Real components: the Kafka-protocol broker, tiny real models, the model store, the exporter, the
specialist's ONNX engine; the only stand-ins are scoring functions injected into the gate (to make
a candidate that raises the LLM share on purpose) and a slow fake round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig
from autoannotator.specialist.reload import ReleaseFollower
from autoannotator.specialist.service import Specialist, group_id
from autoannotator.stream.loop import ServiceLoop
from autoannotator.stream.reader import TopicReader
from autoannotator.trainer.gate import Peer, evaluate_gate, serving_predictor
from autoannotator.trainer.pool import PoolSample
from autoannotator.trainer.service import SERVICE, Trainer, build_trainer
from autoannotator.trainer.share import Routing, estimate_share
from autoannotator.voter.audit import AuditWindow, Calibrations
from autoannotator.voter.service import Voter
from autoannotator.wire import LabelSource, ReviewedSample, TextRecord

from tests.helpers.kafka import running, send, send_texts
from tests.helpers.tiny_model import CORPUS, build_tiny_artifact
from tests.helpers.waiting import wait_until
from tests.trainer.test_service import releases, reviewed, seeded_store

TASK = ("negative", "neutral", "positive")


def audited(n: int, prefix: str = "a") -> list[ReviewedSample]:
    """``n`` audit samples (records the voter sent to review regardless of score), labelled by the corpus."""
    samples = []
    for i in range(n):
        text, label = CORPUS[i % len(CORPUS)]
        rid = f"{prefix}-{i}"
        samples.append(ReviewedSample(record_id=rid, record=TextRecord(id=rid, text=text), label=label,
                                      source=LabelSource.LABEL_SOURCE_LLM, reviewer="test", audit=True,
                                      consensus_label=label, score=0.5))
    return samples


def loop_config(make_config: Callable[..., PipelineConfig], tmp_path: Path, voter: dict | None = None,
                specialists: list[dict] | None = None, **trainer: object) -> PipelineConfig:
    """Specialist s1 (or ``specialists``) on the test store, a trainer that trains a few steps, voter settings."""
    settings = {"beta": 30, "batch_size": 8, "max_steps": 4, "holdout_fraction": 0.4, "margin": 1.0,
                "pool_path": str(tmp_path / "pool.sqlite"), **trainer}
    return make_config(specialists=specialists or [{"name": "s1"}], voter={"quorum": 1, **(voter or {})},
                       store={"uri": f"file://{tmp_path}/store"}, trainer=settings, data_dir=str(tmp_path / "data"))


def outcomes(config: PipelineConfig, bootstrap: str, ids: set[str], timeout_s: float) -> set[str]:
    """Read ``labels`` and ``hard`` until every id in ``ids`` has an outcome in one of them."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    with TopicReader(config.kafka, bootstrap, "labels") as labels, TopicReader(config.kafka, bootstrap,
                                                                                "hard") as hard_:
        while time.monotonic() < deadline and not ids <= seen:
            seen |= {m.record_id for m in labels.poll(0.3)} | {m.record_id for m in hard_.poll(0.3)}
    return seen & ids


def hard(n: int) -> list[ReviewedSample]:
    """``n`` reviewed hard samples (not audit)."""
    return [ReviewedSample.FromString(value) for _, value in reviewed(n, prefix="h")]


def test_a_round_trains_on_audit_samples_and_calibrates_the_version_it_promotes(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    store = seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    config = loop_config(make_config, tmp_path)
    trainer = build_trainer(config, kafka_bootstrap)
    trainer.pool.add(hard(20) + audited(60))
    [round_] = trainer.run_once()
    assert round_.status == "promoted", round_.error
    trained = set(trainer.pool.round_samples(round_.round_id, "new"))
    audit_train = {s.seq for s in trainer.pool._samples("audit = 1 AND holdout = 0", ())}
    assert audit_train and audit_train <= trained
    assert round_.metrics["audit_train_samples"] == len(audit_train)
    holdout_audit = [s for s in trainer.pool._samples("holdout = 1", ()) if s.audit]
    assert round_.metrics["heldout_audit_samples"] == len(holdout_audit) >= 10
    manifest = store.manifest("s1", "v0002")
    assert manifest.calibration["samples"] == len(holdout_audit)
    assert manifest.calibration["temperature"] == pytest.approx(round_.metrics["candidate_temperature"])
    [release] = releases(config, kafka_bootstrap)
    assert release.temperature == pytest.approx(manifest.calibration["temperature"])
    assert [h.record_id for h in release.holdout] == [s.record_id for s in holdout_audit]
    assert all(len(h.probs) == len(TASK) and h.label in TASK for h in release.holdout)


def _fake_samples(n: int, audit: bool = True) -> list[PoolSample]:
    return [PoolSample(i + 1, f"r{i}", f"text {i}", TASK[i % 3], audit) for i in range(n)]


def _sharp(targets: np.ndarray, top: float) -> np.ndarray:
    probs = np.full((len(targets), 3), (1 - top) / 2)
    probs[np.arange(len(targets)), targets] = top
    return probs


def test_a_candidate_that_raises_the_estimated_llm_share_is_rejected_even_with_equal_accuracy() -> None:
    samples = _fake_samples(60)
    targets = np.array([TASK.index(s.label) for s in samples])
    wrong = (targets + 1) % 3
    # Both are right on 9 in 10. The current version is sure where it is right and unsure where it is
    # wrong; the candidate is equally lukewarm everywhere, so no temperature makes it safe to accept.
    right = np.arange(60) % 10 != 0
    current = np.where(right[:, None], _sharp(targets, 0.95), _sharp(wrong, 0.4))
    candidate = np.where(right[:, None], _sharp(targets, 0.6), _sharp(wrong, 0.6))
    scored = {"candidate": candidate, "current": current}

    def predict(artifact: Path, labels: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return scored[artifact.name]

    result = evaluate_gate(Path("candidate"), Path("current"), samples, task_labels=TASK, margin=0.0,
                           predict=predict, routing=Routing(policy="soft", tau=0.93, audit_rate=0.0))
    assert result.candidate_accuracy == result.current_accuracy == 0.9
    assert result.candidate_share == 1.0 and result.current_share == pytest.approx(0.1)
    assert result.accuracy_ok and not result.share_ok and not result.promote
    assert "estimated LLM share" in result.reason()


def test_the_share_is_estimated_on_held_out_audit_samples_only_with_the_peers_at_their_temperatures() -> None:
    samples = _fake_samples(40, audit=True) + _fake_samples(40, audit=False)
    targets = np.array([TASK.index(s.label) for s in samples])
    scored = {"candidate": _sharp(targets, 0.9), "current": _sharp(targets, 0.9)}
    # The hard tail (non-audit) is where the current version is wrong: that must not move the share.
    scored["current"][40:] = _sharp((targets[40:] + 1) % 3, 0.9)
    peer = Peer(_sharp(targets[:40], 0.9), temperature=1.0)

    def predict(artifact: Path, labels: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return scored[artifact.name]

    result = evaluate_gate(Path("candidate"), Path("current"), samples, task_labels=TASK, margin=0.0,
                           predict=predict, routing=Routing(target_error=0.1, audit_rate=0.03, min_samples=30),
                           peers=[peer])
    assert result.audit_samples == 40 and result.candidate_accuracy > result.current_accuracy
    assert result.candidate_share == result.current_share == pytest.approx(0.03)
    expected = estimate_share([scored["candidate"][:40], peer.probs], [result.candidate_temperature, 1.0],
                              targets[:40], Routing(target_error=0.1, audit_rate=0.03, min_samples=30))
    assert result.candidate_share == pytest.approx(expected.share)


def test_without_enough_audit_samples_the_error_bounded_share_is_everything() -> None:
    targets = np.array([0, 1, 2] * 5)
    estimate = estimate_share([_sharp(targets, 0.99)], [1.0], targets, Routing(min_samples=30))
    assert estimate.share == 1.0 and estimate.threshold == float("inf")


def test_a_round_whose_candidate_raises_the_share_is_rejected_kept_and_not_served(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    store = seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    config = loop_config(make_config, tmp_path, voter={"policy": "soft", "tau": 0.6})
    real = serving_predictor(config, "s1")

    def flat_candidate(artifact: Path, labels: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        if artifact.name == "candidate":  # no confidence anywhere: every record would go to the LLM
            return np.full((len(texts), len(labels)), 1 / len(labels))
        return real(artifact, labels, texts)

    trainer = Trainer(config, store, lambda *_: None, predictors={"s1": flat_candidate},
                      work_dir=tmp_path / "work")
    trainer.pool.add(hard(20) + audited(60))
    [round_] = trainer.run_once()
    assert round_.status == "rejected", round_.error
    assert round_.metrics["candidate_llm_share"] > round_.metrics["current_llm_share"]
    assert "estimated LLM share" in round_.metrics["rejected_because"]
    assert store.versions("s1") == ["v0001"] and store.current("s1") == "v0001"
    kept = Path(round_.metrics["kept_at"])
    assert (kept / "model.onnx").is_file() and (kept / "manifest.json").is_file()


def test_an_int8_parent_yields_an_int8_child(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_hf_model: Path, tmp_path: Path
) -> None:
    artifact = build_tiny_artifact(tmp_path / "int8", model_dir=tiny_hf_model, int8=True)
    store = ModelStore(f"file://{tmp_path}/store")
    store.set_current("s1", store.publish("s1", artifact).version)
    assert store.manifest("s1", "v0001").precision == "int8"
    config = loop_config(make_config, tmp_path)
    trainer = build_trainer(config, kafka_bootstrap)
    trainer.pool.add(hard(40))
    [round_] = trainer.run_once()
    assert round_.status == "promoted", round_.error
    assert store.manifest("s1", "v0002").precision == "int8" and round_.metrics["precision"] == "int8"


def test_records_produced_during_a_slow_round_are_labelled_before_the_round_ends(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    store = seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    config = loop_config(make_config, tmp_path, voter={"policy": "vote"})
    follower = ReleaseFollower(config, "s1", store, bootstrap=kafka_bootstrap).start()
    specialist = ServiceLoop(config, "specialist-s1", Specialist(config, "s1", follower.load_current(),
                             follower=follower), bootstrap=kafka_bootstrap, group_id=group_id("s1"))
    voter = ServiceLoop(config, "voter", Voter(config), bootstrap=kafka_bootstrap)
    trainer = build_trainer(config, kafka_bootstrap)
    release_round, round_started = threading.Event(), threading.Event()
    ended: list[float] = []

    def slow_round(name: str) -> None:  # a fake round that lasts until the test lets it end
        round_started.set()
        release_round.wait(120)
        ended.append(time.monotonic())

    trainer.runner.run = slow_round  # type: ignore[method-assign]
    texts = {f"during-{i}": CORPUS[i % len(CORPUS)][0] for i in range(40)}
    try:
        with running(specialist), running(voter), running(ServiceLoop(config, SERVICE, trainer,
                                                                      bootstrap=kafka_bootstrap)):
            send(config, kafka_bootstrap, "reviewed", reviewed(30))
            assert round_started.wait(60), "the round never started"
            send_texts(config, kafka_bootstrap, texts)
            decided = outcomes(config, kafka_bootstrap, set(texts), timeout_s=90)
            decided_at = time.monotonic()
            assert trainer.round_running and not ended
            release_round.set()
            wait_until(lambda: not trainer.round_running, 30, "the fake round to end", step_s=0.5)
    finally:
        release_round.set()
        follower.stop()
    assert decided == set(texts)
    assert decided_at < ended[0]


def test_a_pool_written_before_audit_samples_existed_opens_with_every_old_sample_not_audit(tmp_path: Path) -> None:
    import sqlite3

    from autoannotator.trainer.pool import SamplePool

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE samples (seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT NOT NULL UNIQUE,"
               " text TEXT NOT NULL, label TEXT NOT NULL, source INTEGER NOT NULL, holdout INTEGER NOT NULL,"
               " added_ms INTEGER NOT NULL, payload BLOB NOT NULL)")
    db.execute("INSERT INTO samples (record_id, text, label, source, holdout, added_ms, payload)"
               " VALUES ('old', 'a text', 'neutral', 1, 0, 0, x'')")
    db.commit()
    db.close()
    pool = SamplePool(path, 0.5)
    pool.add(audited(4))
    data = pool.round_data("s1", 0.0, 0)
    by_id = {s.record_id: s.audit for s in data.new + data.holdout}
    assert by_id.pop("old") is False and set(by_id.values()) == {True}
    assert sum(pool.audit_counts().values()) == 4


def test_vote_routing_share_counts_records_without_enough_agreement() -> None:
    targets = np.array([0, 1, 2, 0])
    agree = _sharp(targets, 0.9)
    split = agree.copy()
    split[:2] = _sharp((targets[:2] + 1) % 3, 0.9)  # the second specialist disagrees on two records
    estimate = estimate_share([agree, split], [1.0, 1.0], targets, Routing(policy="vote", eps=0.34, audit_rate=0.0))
    assert estimate.share == 0.5


def two_specialist_trainer(make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path,
                           tmp_path: Path) -> tuple[PipelineConfig, Trainer]:
    """A trainer of s1 and s2, both serving the tiny artifact as v0001."""
    store = seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    store.set_current("s2", store.publish("s2", tiny_artifact).version)
    config = loop_config(make_config, tmp_path, specialists=[{"name": "s1"}, {"name": "s2"}])
    return config, build_trainer(config, kafka_bootstrap)


def test_the_voter_seeds_the_window_of_the_version_set_a_promotion_creates_from_the_releases(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    config, trainer = two_specialist_trainer(make_config, kafka_bootstrap, tiny_artifact, tmp_path)
    trainer.pool.add(hard(20) + audited(60))
    [round_] = trainer.run_once(["s1"])
    assert round_.status == "promoted", round_.error
    holdout_ids = [s.record_id for s in trainer.pool._samples("holdout = 1", ()) if s.audit]
    announced = releases(config, kafka_bootstrap)
    # s2's current version is announced again with its own predictions on the same samples. Releases
    # are keyed by specialist, so across partitions a reader may see them in either order.
    assert sorted((r.specialist, r.version) for r in announced) == [("s1", "v0002"), ("s2", "v0001")]
    for release in announced:
        assert [h.record_id for h in release.holdout] == holdout_ids
        assert all(len(h.probs) == len(TASK) and h.label in TASK for h in release.holdout)
    seeded: list[int] = []
    window = AuditWindow(TASK, ["s1", "s2"], Calibrations(), target_error=0.2, min_samples=5, quorum=2,
                         on_restart=lambda key, n: seeded.append(n))
    for release in announced:
        window.add_release(release)
    window.certified((("s1", "v0002"), ("s2", "v0001")))
    assert seeded == [len(holdout_ids)] and len(holdout_ids) >= 10


def test_a_batch_of_rounds_announces_its_promotions_together_after_its_last_round(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    config, trainer = two_specialist_trainer(make_config, kafka_bootstrap, tiny_artifact, tmp_path)
    finished_at_announce: list[tuple[str, int]] = []
    announce = trainer.runner.announce

    def recording(manifest, holdout):  # the real announcer, noting how many rounds had finished
        finished_at_announce.append((manifest.specialist, len(trainer.pool.rounds("s1") + trainer.pool.rounds("s2"))))
        announce(manifest, holdout)

    trainer.runner.announce = recording
    trainer.pool.add(hard(20) + audited(60))
    rounds = trainer.run_once()
    assert [r.status for r in rounds] == ["promoted", "promoted"], [r.error for r in rounds]
    # Nothing was announced between the rounds: one change of the voter's version set, not two.
    assert sorted(finished_at_announce) == [("s1", 2), ("s2", 2)]
    # s2's gate compared with what the voter still served (s1's promotion was not announced yet).
    assert rounds[1].metrics["serving_versions"] == "s1@v0001,s2@v0001"
    assert rounds[1].metrics["serving_audit_samples"] > 0
    announced = releases(config, kafka_bootstrap)
    assert sorted((r.specialist, r.version) for r in announced) == [("s1", "v0002"), ("s2", "v0002")]
    holdout_ids = [s.record_id for s in trainer.pool._samples("holdout = 1", ()) if s.audit]
    assert all([h.record_id for h in r.holdout] == holdout_ids for r in announced) and holdout_ids
    window = AuditWindow(TASK, ["s1", "s2"], Calibrations(), target_error=0.2, min_samples=5, quorum=2)
    for release in announced:
        window.add_release(release)
    window.certified((("s1", "v0002"), ("s2", "v0002")))
    assert window.window_size((("s1", "v0002"), ("s2", "v0002"))) == len(holdout_ids)
    assert trainer.runner.unannounced == []


def test_a_batch_is_announced_with_the_probabilities_its_gates_computed_without_running_an_artifact_again(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from autoannotator.trainer import gate

    config, trainer = two_specialist_trainer(make_config, kafka_bootstrap, tiny_artifact, tmp_path)
    runs: list[str] = []
    real = gate.probabilities
    announce_promoted = trainer.runner.announce_promoted

    def counting(artifact, samples, labels, predict):
        runs.append(str(artifact))
        return real(artifact, samples, labels, predict)

    def announcing() -> list[str]:
        runs.clear()  # only what the announcement itself runs
        return announce_promoted()

    monkeypatch.setattr(gate, "probabilities", counting)
    trainer.runner.announce_promoted = announcing
    trainer.pool.add(hard(20) + audited(60))
    rounds = trainer.run_once()
    assert [r.status for r in rounds] == ["promoted", "promoted"], [r.error for r in rounds]
    assert runs == []
    # What was announced is what the published artifacts give on those samples.
    store = ModelStore(config.store.uri)
    holdout = [s for s in trainer.pool._samples("holdout = 1", ()) if s.audit]
    for release in releases(config, kafka_bootstrap):
        artifact = store.fetch(release.specialist, release.version, tmp_path / f"check-{release.specialist}")
        expected = real(Path(artifact), holdout, list(TASK), serving_predictor(config, release.specialist))
        np.testing.assert_allclose([h.probs for h in release.holdout], expected, rtol=1e-5, atol=1e-6)


def test_a_promotion_whose_announcement_fails_stays_pending_and_is_announced_by_the_next_try(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    from autoannotator.exceptions import DeliveryError
    from autoannotator.trainer.exceptions import PromotionError

    seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    config = loop_config(make_config, tmp_path)
    trainer = build_trainer(config, kafka_bootstrap)
    announce = trainer.runner.announce
    calls = {"n": 0}

    def failing_once(manifest, holdout):
        calls["n"] += 1
        if calls["n"] == 1:
            raise DeliveryError("broker unreachable")
        announce(manifest, holdout)

    trainer.runner.announce = failing_once
    trainer.pool.add(hard(20) + audited(60))
    with pytest.raises(PromotionError, match=r"s1 v0002 .* \(retried with the next batch\): broker unreachable"):
        trainer.run_once()
    assert trainer.runner.unannounced == ["s1"] and releases(config, kafka_bootstrap) == []
    assert trainer.runner.announce_promoted() == ["s1"]
    assert [(r.specialist, r.version) for r in releases(config, kafka_bootstrap)] == [("s1", "v0002")]


def test_the_gate_rejects_a_candidate_whose_set_would_route_more_than_the_serving_set_does_now() -> None:
    from autoannotator.trainer.gate import GateResult

    held_out_only = GateResult(0.9, 0.9, 100, 0.0, candidate_share=0.6, current_share=0.7, audit_samples=100)
    assert held_out_only.promote
    serving = GateResult(0.9, 0.9, 100, 0.0, candidate_share=0.6, current_share=0.7, audit_samples=100,
                         serving_share=0.45, serving_samples=900)
    assert not serving.share_ok and not serving.promote
    assert "0.6000 on 100 held-out audit samples > 0.4500 that the serving versions cause now (on 900" in \
        serving.reason()


def test_a_round_is_rejected_when_the_serving_set_routes_less_on_its_live_audit_samples(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    from autoannotator.wire import Prediction, PredictionStatus

    seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    config = loop_config(make_config, tmp_path, voter={"target_error": 0.05, "min_audit_samples": 20})
    trainer = build_trainer(config, kafka_bootstrap)
    live = audited(120, prefix="live")
    for sample in live:  # what the serving v0001 voted on these audit records: sure and right
        probs = [0.99 if label == sample.label else 0.005 for label in TASK]
        sample.predictions.append(Prediction(record_id=sample.record_id, specialist="s1", model_version="v0001",
                                             status=PredictionStatus.PREDICTION_STATUS_OK, probs=probs,
                                             labels=list(TASK)))
    trainer.pool.add(hard(20) + live)
    held = [s for s in trainer.pool._samples("holdout = 1", ()) if s.audit]
    serving = trainer.runner.serving_share(held)  # the seed (held out) and the live audit samples
    assert serving is not None and serving.samples == 120 and serving.share == pytest.approx(0.03)
    assert 0 < len(held) < 120
    [round_] = trainer.run_once()
    assert round_.status == "rejected", round_.metrics
    assert round_.metrics["serving_llm_share"] == pytest.approx(0.03)
    assert round_.metrics["candidate_llm_share"] > 0.03
    assert "that the serving versions cause now" in round_.metrics["rejected_because"]
    assert releases(config, kafka_bootstrap) == [] and trainer.runner.unannounced == []
