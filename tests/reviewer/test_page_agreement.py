"""Agreement and corrections: overlap between people, the LLM checked by people, revisions on the wire.

* Cohen's kappa and the published metrics match hand-computed figures for scripted answers;
* ``reviewer.human.overlap`` keeps an item on a second person's queue, never a third's;
* ``reviewer.human_audit_rate`` queues a hash-chosen share of LLM labels for a person, the same
  share after a replay;
* a correction goes out as a new ``labels`` message with revision 2 and the corrector's name,
  and a ``reviewed`` update.
"""

from __future__ import annotations

import pytest
from autoannotator.errorbound import audit_chosen
from autoannotator.mockllm import MockLLM
from autoannotator.reviewer.agreement import cohen_kappa, stats
from autoannotator.reviewer.queue import LabelTaken, ReviewQueue
from autoannotator.reviewer.service import Reviewer
from autoannotator.stream.loop import ServiceLoop
from autoannotator.wire import LabelSource
from prometheus_client import REGISTRY

from tests.helpers.kafka import running, send
from tests.helpers.reviewer import dataset, hard_items, hard_sample, read_topic
from tests.helpers.reviewer import group as _group
from tests.helpers.waiting import wait_until
from tests.reviewer.test_human import _sync

pytestmark = pytest.mark.timeout(180)
ANN, ROOT = "ann-token-0123456789abcdef", "root-token-0123456789abcdef"

# ann and bob on ten records: both positive 4, both negative 3, ann positive / bob negative 2,
# ann negative / bob positive 1. p_o = 0.7; ann 6:4, bob 5:5 so p_e = (6*5 + 4*5) / 100 = 0.5;
# kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
SCRIPT = [("positive", "positive")] * 4 + [("negative", "negative")] * 3 + [("positive", "negative")] * 2 + [
    ("negative", "positive")]


def test_cohen_kappa_matches_the_hand_computed_example() -> None:
    assert cohen_kappa(SCRIPT) == pytest.approx(0.4)
    assert cohen_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    assert cohen_kappa([("a", "a")] * 3) == 1.0  # one label only: perfect agreement
    assert cohen_kappa([]) is None


def test_the_pair_agreement_metric_matches_scripted_answers(tmp_path) -> None:
    queue = ReviewQueue(tmp_path / "q.sqlite")
    for i, (ann, bob) in enumerate(SCRIPT):
        queue.put(hard_sample(f"o{i}", f"text {i}"), "disagreement", needed=2)
        assert queue.label(f"o{i}", ann, "ann") is True  # the item's label
        assert queue.label(f"o{i}", bob, "bob") is False  # a second opinion
    figures = stats(queue)
    queue.close()
    assert figures["pairs"] == [{"a": "ann", "b": "bob", "items": 10, "agreement": pytest.approx(0.7),
                                 "kappa": pytest.approx(0.4)}]
    assert REGISTRY.get_sample_value("autoannotator_review_agreement_kappa", {"pair": "ann|bob"}) == pytest.approx(0.4)
    assert REGISTRY.get_sample_value("autoannotator_review_agreement_items", {"pair": "ann|bob"}) == 10


def test_the_llm_agreement_metric_matches_scripted_answers(tmp_path) -> None:
    queue = ReviewQueue(tmp_path / "q.sqlite")
    for i, (llm, person) in enumerate(SCRIPT):
        queue.put(hard_sample(f"l{i}", f"text {i}"), "llm_audit", llm_label=llm)
        queue.label(f"l{i}", person, "ann")
    queue.put(hard_sample("unanswered", "text"), "llm_audit", llm_label="neutral")  # not counted yet
    figures = stats(queue)
    revision = queue.get("l0").revision
    queue.close()
    assert figures["llm"] == {"items": 10, "agreement": pytest.approx(0.7), "kappa": pytest.approx(0.4)}
    assert REGISTRY.get_sample_value("autoannotator_llm_human_agreement") == pytest.approx(0.7)
    assert REGISTRY.get_sample_value("autoannotator_llm_human_kappa") == pytest.approx(0.4)
    assert REGISTRY.get_sample_value("autoannotator_llm_human_audited") == 10
    assert revision == 2  # the LLM's label was revision 1


def test_an_overlap_item_goes_to_a_second_person_and_no_third(tmp_path) -> None:
    queue = ReviewQueue(tmp_path / "q.sqlite")
    queue.put(hard_sample("x", "text"), "disagreement", needed=2)
    queue.put(hard_sample("y", "text"), "disagreement")
    queue.label("x", "neutral", "ann")
    queue.label("y", "neutral", "ann")
    assert [i.record_id for i in queue.open_items(reviewer="bob")] == ["x"]
    assert queue.open_items(reviewer="ann") == []
    queue.label("x", "positive", "bob")
    assert queue.open_items(reviewer="cy") == []
    with pytest.raises(LabelTaken, match="already labelled by ann"):
        queue.label("x", "negative", "cy")
    with pytest.raises(LabelTaken, match="you already labelled"):
        queue.label("x", "negative", "bob")
    assert queue.get("x").label == "neutral"  # the first answer is the item's label
    queue.close()


def _config(make_config, tmp_path, mode: str, **reviewer: object):
    (tmp_path / "tokens").write_text(f"ann {ANN}\nroot {ROOT} admin\n")
    return make_config(reviewer={
        "mode": mode, "cache_path": str(tmp_path / "cache.sqlite"),
        "human": {"port": 0, "queue_path": str(tmp_path / "queue.sqlite"), "undo_window_s": 0,
                  "tokens_file": str(tmp_path / "tokens")},
        **reviewer,
    })


def test_the_human_audit_share_is_hash_chosen_and_stable_under_replay(make_config, kafka_bootstrap, tmp_path) -> None:
    texts, gold = dataset(16, "au")
    chosen = {rid for rid in texts if audit_chosen(rid, 0.5, salt="human-audit")}
    assert 0 < len(chosen) < len(texts)
    mock = MockLLM(gold)
    url = mock.start_in_thread()
    try:
        config = _config(make_config, tmp_path, "llm", human_audit_rate=0.5,
                         llm={"base_url": url, "batch_size": 4, "backoff_initial_s": 0.01, "backoff_max_s": 0.05})
        reviewer = Reviewer(config)
        with running(ServiceLoop(config, "reviewer", reviewer, group_id=_group(config), bootstrap=kafka_bootstrap)):
            send(config, kafka_bootstrap, "hard", hard_items(texts))
            assert wait_until(lambda: reviewer.queue.progress()["open"] == len(chosen), 60)
            send(config, kafka_bootstrap, "hard", hard_items(texts))  # a replay of every record
            labels = read_topic(config, kafka_bootstrap, "labels", lambda got: len(got) >= 2 * len(texts))
            queued = {i.record_id: (i.reason, i.llm_label) for i in reviewer.queue.open_items(100)}
            rid = sorted(chosen)[0]
            assert _sync("POST", f"{reviewer.page.url}/api/label", ANN, {"id": rid, "label": "neutral"})[0] == 200
            after = read_topic(config, kafka_bootstrap, "labels",
                               lambda got: any(m.source == LabelSource.LABEL_SOURCE_HUMAN for m in got))
    finally:
        mock.stop_thread()
    assert set(queued) == chosen  # the same share after the replay, nothing queued twice
    assert all(reason == "llm_audit" and llm == gold.by_id[r] for r, (reason, llm) in queued.items())
    assert all(m.revision == 1 and m.decided_for == config.reviewer.llm.model for m in labels)
    human = [m for m in after if m.source == LabelSource.LABEL_SOURCE_HUMAN]
    assert [(m.record_id, m.label, m.revision, m.decided_for) for m in human] == [(rid, "neutral", 2, "ann")]


def test_a_correction_emits_revision_2_with_the_correctors_identity(make_config, kafka_bootstrap, tmp_path) -> None:
    texts, _ = dataset(1, "co")
    config = _config(make_config, tmp_path, "human")
    reviewer = Reviewer(config)
    url = reviewer.page.url
    with running(ServiceLoop(config, "reviewer", reviewer, group_id=_group(config), bootstrap=kafka_bootstrap)):
        send(config, kafka_bootstrap, "hard", hard_items(texts))
        assert wait_until(lambda: reviewer.queue.progress()["open"] == 1, 40)
        assert _sync("POST", f"{url}/api/label", ANN, {"id": "co0", "label": "positive"})[0] == 200
        assert wait_until(lambda: reviewer.queue.progress()["emitted"] == 1, 20)
        status, body = _sync("POST", f"{url}/api/correct", ROOT, {"id": "co0", "label": "negative"})
        assert status == 200 and body["revision"] == 2
        labels = read_topic(config, kafka_bootstrap, "labels", lambda got: len(got) >= 2)
        reviewed = read_topic(config, kafka_bootstrap, "reviewed", lambda got: len(got) >= 2)
        assert wait_until(lambda: reviewer.queue.get("co0").status == "emitted", 20)
    assert [(m.label, m.revision, m.decided_for) for m in labels] == [("positive", 1, "ann"), ("negative", 2, "root")]
    assert [(m.label, m.revision, m.reviewer) for m in reviewed] == [("positive", 1, "human:ann"),
                                                                     ("negative", 2, "human:root")]


def test_audit_keeps_the_highest_revision_and_sees_no_conflict_in_a_correction() -> None:
    from autoannotator.tools.audit import Outcome, account

    outcomes = [Outcome("r1", "label", "positive", "llm", 1), Outcome("r1", "label", "negative", "human", 2),
                Outcome("r2", "label", "neutral", "human", 1), Outcome("r2", "label", "positive", "human", 1)]
    report = account(["r1", "r2"], outcomes)
    assert report.conflicting == ["r2"]  # two different labels at one revision still conflict
    assert report.labels_by_source == {"human": 2}  # r1 counts as its latest revision


def test_undoing_a_persons_answer_to_an_llm_audit_returns_it_to_the_queue(tmp_path) -> None:
    queue = ReviewQueue(tmp_path / "q.sqlite")
    queue.put(hard_sample("a1", "text"), "llm_audit", llm_label="positive")
    queue.label("a1", "negative", "ann")
    queue.undo("a1", "ann", admin=False)
    item = queue.get("a1")
    assert (item.status, item.label, item.revision) == ("open", None, 1)
    queue.label("a1", "neutral", "ann")
    assert queue.get("a1").revision == 2
    queue.close()


def test_a_queue_file_from_before_revisions_is_upgraded_in_place(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # the schema of the first release
    db.execute("CREATE TABLE items (seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT UNIQUE NOT NULL, "
               "hard BLOB NOT NULL, reason TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open', label TEXT, "
               "reviewer TEXT, labelled_at REAL, enqueued_at REAL NOT NULL)")
    for rid, status, label in (("o1", "open", None), ("e1", "emitted", "neutral"), ("l1", "labelled", "positive")):
        db.execute("INSERT INTO items (record_id, hard, reason, status, label, reviewer, labelled_at, enqueued_at) "
                   "VALUES (?, ?, 'disagreement', ?, ?, ?, 1.0, 1.0)",
                   (rid, hard_sample(rid, "t").SerializeToString(), status, label, "ann" if label else None))
    db.commit()
    db.close()
    queue = ReviewQueue(path)
    assert [(i.record_id, i.revision) for i in queue.due(0)] == [("l1", 1)]
    assert queue.correct("e1", "negative", "ann") == 2
    assert [i.record_id for i in queue.open_items(reviewer="bob")] == ["o1"]
    queue.close()
