"""The meta-controller: ranking the catalog for a task, mapping labels, writing the pipeline config.

Real components throughout: the shipped catalog, the local all-MiniLM-L6-v2 encoder (loaded once per
session; catalog embeddings cached on disk), the real CLI, and local HTTP servers standing in for an
OpenAI-compatible LLM (which cannot exist here). The Hugging Face Hub is unreachable here by design.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml
from autoannotator.cli import main
from autoannotator.config import load_config
from autoannotator.planner import commands
from autoannotator.planner.catalog import Catalog, ModelCard, load_catalog, parse_catalog
from autoannotator.planner.embed import EndpointEncoder, MiniLMEncoder, catalog_embeddings
from autoannotator.planner.exceptions import CatalogError, HubUnreachable, UnmappedLabels
from autoannotator.planner.hub import card_from_info
from autoannotator.planner.labelmap import LLMLabelMapper, map_labels
from autoannotator.planner.plan import build_config, helm_values
from autoannotator.planner.rank import Ranking, rank

SENTIMENT = ["negative", "neutral", "positive"]
TWEET_TASK = "Sentiment of tweets: is the tweet negative, neutral or positive?"
# The paper's Table 2 style choices for tweet sentiment that the catalog carries.
PAPER_SENTIMENT = {
    "cardiffnlp/twitter-roberta-base-sentiment-latest",
    "cardiffnlp/twitter-roberta-base-sentiment",
    "finiteautomata/bertweet-base-sentiment-analysis",
    "distilbert-base-uncased-finetuned-sst-2-english",
}


@pytest.fixture(scope="session")
def planner_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private embedding cache for the session."""
    return tmp_path_factory.mktemp("planner-cache")


@pytest.fixture(scope="session")
def encoder() -> MiniLMEncoder:
    """The local MiniLM encoder, loaded once."""
    return MiniLMEncoder()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    """The shipped catalog."""
    return load_catalog()


@pytest.fixture(scope="session")
def catalog_vectors(catalog: Catalog, encoder: MiniLMEncoder, planner_cache: Path) -> np.ndarray:
    """Catalog embeddings, computed once per session and cached on disk."""
    return catalog_embeddings(catalog, encoder, planner_cache)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, encoder: MiniLMEncoder, planner_cache: Path) -> Any:
    """Runs ``autoannotator`` in-process, reusing the session's encoder and cache."""
    monkeypatch.setattr(commands, "make_encoder", lambda args: encoder)
    monkeypatch.setenv("AUTOANNOTATOR_PLANNER_CACHE", str(planner_cache))
    monkeypatch.delenv("AUTOANNOTATOR_LLM_URL", raising=False)
    return main


def plan_for(task: str, labels: list[str], catalog: Catalog, vectors: np.ndarray, encoder: MiniLMEncoder,
             **kwargs: Any) -> Ranking:
    """Rank the shipped catalog for a task."""
    return rank(catalog.cards, vectors, encoder.encode([task])[0], task, labels, **kwargs)


# --- catalog -----------------------------------------------------------------------------------------


def test_catalog_ships_at_least_fifty_models_across_task_families(catalog: Catalog) -> None:
    assert len(catalog.cards) >= 50
    text = " ".join(card.description.lower() for card in catalog.cards)
    for family in ("sentiment", "toxic", "emotion", "topic", "spam", "inference", "intent", "language", "hate"):
        assert family in text, family


def test_catalog_records_the_published_labels_of_the_papers_sentiment_models(catalog: Catalog) -> None:
    assert catalog.get("cardiffnlp/twitter-roberta-base-sentiment-latest").labels == SENTIMENT
    assert catalog.get("cardiffnlp/twitter-roberta-base-sentiment").labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert catalog.get("finiteautomata/bertweet-base-sentiment-analysis").labels == ["NEG", "NEU", "POS"]
    assert catalog.get("distilbert-base-uncased-finetuned-sst-2-english").labels == ["NEGATIVE", "POSITIVE"]


def test_malformed_catalog_entry_is_named_in_the_error() -> None:
    raw = json.dumps({"models": [{"id": "a/b", "description": "x", "labels": ["p", "p"]}]}).encode()
    with pytest.raises(CatalogError, match=r"models\.0 \(a/b\).*unique"):
        parse_catalog(raw, "bad.json")


def test_catalog_embeddings_are_cached_on_disk_keyed_by_the_catalog_hash(
    catalog: Catalog, catalog_vectors: np.ndarray, planner_cache: Path
) -> None:
    cached = list(planner_cache.glob(f"catalog-{catalog.sha256[:16]}-*.npy"))
    assert len(cached) == 1
    assert np.allclose(np.load(cached[0]), catalog_vectors)
    assert np.allclose(np.linalg.norm(catalog_vectors, axis=1), 1.0, atol=1e-5)


# --- ranking -----------------------------------------------------------------------------------------


def test_tweet_sentiment_picks_three_way_sentiment_models_including_the_papers_choices(
    catalog: Catalog, catalog_vectors: np.ndarray, encoder: MiniLMEncoder
) -> None:
    ranking = plan_for(TWEET_TASK, SENTIMENT, catalog, catalog_vectors, encoder, k=3)
    chosen = [c.card.id for c in ranking.chosen]
    assert len(chosen) == 3
    assert PAPER_SENTIMENT & set(chosen), chosen
    for cand in ranking.chosen:
        assert set(cand.mapping.label_map.values()) == set(SENTIMENT), cand.card.id
        assert cand.card.speaks("en"), f"{cand.card.id} is not for English tweets"
        assert cand.mapping.complete


def test_toxic_comments_pick_toxicity_models(
    catalog: Catalog, catalog_vectors: np.ndarray, encoder: MiniLMEncoder
) -> None:
    ranking = plan_for("Detect toxic, insulting or abusive comments in an online forum", ["toxic", "non-toxic"],
                       catalog, catalog_vectors, encoder, k=3)
    assert len(ranking.chosen) == 3
    for cand in ranking.chosen:
        assert "toxic" in cand.card.description.lower() or "hate" in cand.card.description.lower(), cand.card.id
        assert set(cand.mapping.label_map.values()) == {"toxic", "non-toxic"}, cand.card.id


def test_task_with_no_good_match_says_so(catalog: Catalog, catalog_vectors: np.ndarray, encoder: MiniLMEncoder) -> None:
    ranking = plan_for("Classify the secondary structure of protein amino-acid sequences", ["helix", "sheet", "coil"],
                       catalog, catalog_vectors, encoder)
    assert ranking.no_good_match
    assert ranking.chosen == []
    assert any(note.startswith("no good match") for note in ranking.notes)


def test_ties_in_similarity_are_broken_by_downloads() -> None:
    cards = [
        ModelCard(id=f"author{i}/m{i}", description="same", labels=["a", "b"], downloads=d, architecture=f"arch{i}")
        for i, d in enumerate([10, 5000, 300])
    ]
    vectors = np.tile(np.array([[1.0, 0.0]]), (3, 1))
    ranking = rank(cards, vectors, np.array([1.0, 0.0]), "t", ["a", "b"], k=3)
    assert [c.card.downloads for c in ranking.chosen] == [5000, 300, 10]


def test_choice_prefers_other_authors_over_fine_tunes_of_one_checkpoint() -> None:
    same = [ModelCard(id=f"org/ft{i}", description="d", labels=["a", "b"], base_model="org/base", architecture="bert")
            for i in range(3)]
    other = ModelCard(id="else/model", description="d", labels=["a", "b"], base_model="x/base", architecture="roberta")
    vectors = np.array([[1.0, 0.0], [0.99, 0.14], [0.98, 0.2], [0.8, 0.6]])
    ranking = rank([*same, other], vectors, np.array([1.0, 0.0]), "t", ["a", "b"], k=2)
    assert [c.card.id for c in ranking.chosen] == ["org/ft0", "else/model"]


def test_models_whose_labels_do_not_map_are_ranked_below_those_that_do() -> None:
    fits = ModelCard(id="a/fits", description="d", labels=["NEG", "POS"])
    misfit = ModelCard(id="b/misfit", description="d", labels=["1 star", "5 stars"])
    vectors = np.array([[0.6, 0.8], [1.0, 0.0]])  # the misfit is the more similar one
    ranking = rank([misfit, fits], vectors[::-1], np.array([1.0, 0.0]), "t", ["negative", "positive"], k=1)
    assert [c.card.id for c in ranking.candidates] == ["a/fits", "b/misfit"]
    assert "2 of 2 labels unmapped" in ranking.candidates[1].flags


# --- label mapping -----------------------------------------------------------------------------------


def test_generic_labels_of_cardiffnlp_sentiment_map_by_the_cards_order(catalog: Catalog) -> None:
    card = catalog.get("cardiffnlp/twitter-roberta-base-sentiment")
    mapping = map_labels(card.labels, SENTIMENT, card.label_meanings)
    assert mapping.label_map == {"LABEL_0": "negative", "LABEL_1": "neutral", "LABEL_2": "positive"}
    assert {e.source for e in mapping.entries} == {"card"}


def test_bertweet_abbreviations_map_to_sentiment_labels(catalog: Catalog) -> None:
    card = catalog.get("finiteautomata/bertweet-base-sentiment-analysis")
    mapping = map_labels(card.labels, SENTIMENT, card.label_meanings)
    assert mapping.label_map == {"NEG": "negative", "NEU": "neutral", "POS": "positive"}


def test_binary_sst2_model_maps_but_is_marked_as_never_predicting_neutral(catalog: Catalog) -> None:
    card = catalog.get("distilbert-base-uncased-finetuned-sst-2-english")
    mapping = map_labels(card.labels, SENTIMENT, card.label_meanings)
    assert mapping.label_map == {"NEGATIVE": "negative", "POSITIVE": "positive"}
    assert mapping.uncovered == ["neutral"]


def test_toxicity_synonyms_map_insult_and_neutral_onto_toxic_and_non_toxic(catalog: Catalog) -> None:
    toxic_bert = catalog.get("unitary/toxic-bert")
    assert map_labels(toxic_bert.labels, ["toxic", "non-toxic"]).label_map["insult"] == "toxic"
    s_nlp = catalog.get("s-nlp/roberta_toxicity_classifier")
    assert map_labels(s_nlp.labels, ["toxic", "non-toxic"], s_nlp.label_meanings).label_map == {
        "neutral": "non-toxic", "toxic": "toxic"}
    hate = catalog.get("facebook/roberta-hate-speech-dynabench-r4-target")
    assert map_labels(hate.labels, ["hateful", "clean"]).label_map == {"nothate": "clean", "hate": "hateful"}


def test_unmappable_labels_are_flagged_not_guessed(catalog: Catalog) -> None:
    stars = catalog.get("nlptown/bert-base-multilingual-uncased-sentiment")
    mapping = map_labels(stars.labels, SENTIMENT, stars.label_meanings)
    assert mapping.label_map == {}
    assert [e.model_label for e in mapping.unmapped] == stars.labels
    generic = map_labels(["LABEL_0", "LABEL_1"], ["spam", "ham"])
    assert generic.label_map == {}
    assert all("card's meaning is not recorded" in e.reason for e in generic.unmapped)


def test_a_label_that_fits_two_task_labels_is_flagged_as_ambiguous() -> None:
    mapping = map_labels(["toxic", "clean"], ["hate speech", "offensive", "normal"])
    assert mapping.label_map == {"clean": "normal"}
    assert "ambiguous" in mapping.unmapped[0].reason


def test_config_is_refused_while_a_chosen_model_has_unmapped_labels(
    catalog: Catalog, catalog_vectors: np.ndarray, encoder: MiniLMEncoder
) -> None:
    ranking = plan_for("Star rating of product reviews from 1 to 5", ["bad", "ok", "great"], catalog, catalog_vectors,
                       encoder, k=1)
    assert not ranking.chosen[0].mapping.complete
    with pytest.raises(UnmappedLabels, match="unmapped"):
        build_config(ranking, "reviews")


# --- the LLM (an OpenAI-compatible test server: a paid API cannot run here) ---------------------------


class _FakeOpenAI(BaseHTTPRequestHandler):
    """Answers /chat/completions with a fixed mapping and /embeddings with per-text vectors."""

    mapping: ClassVar[dict[str, Any]] = {}
    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if self.path.endswith("/chat/completions"):
            doc: dict[str, Any] = {"choices": [{"message": {"content": json.dumps(type(self).mapping)}}]}
        else:
            doc = {"data": [{"index": i, "embedding": [float(len(t)), 1.0, 0.0]} for i, t in enumerate(body["input"])]}
        raw = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def fake_openai() -> Iterator[tuple[str, type[_FakeOpenAI]]]:
    """A local OpenAI-compatible server on a free loopback port."""
    handler = type("Handler", (_FakeOpenAI,), {"mapping": {}, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()
    server.server_close()


def test_llm_maps_what_the_rules_leave_open_and_answers_outside_the_label_set_are_refused(
    fake_openai: tuple[str, type[_FakeOpenAI]]
) -> None:
    url, handler = fake_openai
    handler.mapping = {"1 star": "negative", "3 stars": "so-so", "5 stars": None}
    before = map_labels(["1 star", "3 stars", "5 stars"], SENTIMENT)
    after = LLMLabelMapper(url, "test-model").complete(before, "m/stars", "review stars", "review sentiment")
    assert after.label_map == {"1 star": "negative"}
    assert [e.source for e in after.entries] == ["llm", "unmapped", "unmapped"]
    assert "not a task label" in after.unmapped[0].reason
    assert "3 stars" in handler.requests[0]["messages"][1]["content"]


def test_embeddings_endpoint_returns_normalised_rows(fake_openai: tuple[str, type[_FakeOpenAI]]) -> None:
    url, _ = fake_openai
    rows = EndpointEncoder(url, "embed-model").encode(["ab", "abcd"])
    assert rows.shape == (2, 3)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0)


# --- the command -------------------------------------------------------------------------------------


def test_plan_writes_a_config_that_loads_and_validates(cli: Any, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "pipeline.yaml"
    rc = cli(["plan", "--task", TWEET_TASK, "--labels", "negative,neutral,positive", "--k", "3",
              "--label-desc", "neutral=neither positive nor negative", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "proposed mapping" in printed and "next steps:" in printed
    config = load_config(out)
    assert config.task.labels == SENTIMENT
    assert config.task.label_descriptions == {"neutral": "neither positive nor negative"}
    assert len(config.specialists) == 3
    for spec in config.specialists:
        assert set(spec.label_map.values()) == set(SENTIMENT)
    assert config.voter.policy == "error-bounded" and config.voter.quorum == 2  # never a vote rule that cannot route
    assert config.reviewer.llm.prices["gpt-4o-mini"].input_per_mtok > 0
    assert "negative, neutral, positive" in config.reviewer.prompt.instructions
    assert config.trainer.beta == 2000


def test_plan_with_no_good_match_writes_nothing_and_exits_3(cli: Any, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "pipeline.yaml"
    rc = cli(["plan", "--task", "Classify the secondary structure of protein amino-acid sequences",
              "--labels", "helix,sheet,coil", "--out", str(out)])
    assert rc == 3
    assert "no good match" in capsys.readouterr().out
    assert not out.exists()


def test_plan_map_option_settles_labels_by_hand(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    stars = "nlptown/bert-base-multilingual-uncased-sentiment"
    maps = [f"{stars}:1 star=bad", f"{stars}:2 stars=bad", f"{stars}:3 stars=ok", f"{stars}:4 stars=great",
            f"{stars}:5 stars=great"]
    args = ["plan", "--task", "Star rating of product reviews from 1 to 5", "--labels", "bad,ok,great", "--k", "1",
            "--out", str(out)]
    for item in maps:
        args += ["--map", item]
    assert cli(args) == 0
    spec = load_config(out).specialists[0]
    assert spec.label_map == {"1 star": "bad", "2 stars": "bad", "3 stars": "ok", "4 stars": "great",
                              "5 stars": "great"}


def _merge(base: Any, override: Any) -> Any:
    """Helm's values merge: maps merge key by key, everything else (lists included) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def test_helm_values_match_the_charts_values_and_schema(cli: Any, tmp_path: Path) -> None:
    chart = Path(__file__).resolve().parents[2] / "helm" / "autoannotator"
    values_out = tmp_path / "values.yaml"
    rc = cli(["plan", "--task", TWEET_TASK, "--labels", "negative,neutral,positive", "--out",
              str(tmp_path / "p.yaml"), "--emit", "helm-values", "--values-out", str(values_out)])
    assert rc == 0
    values = yaml.safe_load(values_out.read_text())
    config = load_config(tmp_path / "p.yaml")
    assert values == helm_values(config)
    assert [s["name"] for s in values["specialists"]] == [s.name for s in config.specialists]
    assert values["specialists"][0]["config"]["label_map"] == config.specialists[0].label_map
    if not (chart / "values.schema.json").is_file():
        pytest.skip("helm/autoannotator/values.schema.json not present")
    jsonschema = pytest.importorskip("jsonschema")
    merged = _merge(yaml.safe_load((chart / "values.yaml").read_text()), values)
    jsonschema.validate(merged, json.loads((chart / "values.schema.json").read_text()))


# --- the hub (unreachable here; pointed at a closed loopback port so the test means the same anywhere) ---


@pytest.fixture
def closed_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """HF_ENDPOINT at a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


def test_plan_with_hub_fails_clearly_when_the_hub_is_unreachable(cli: Any, closed_hub: str, capsys: Any) -> None:
    rc = cli(["plan", "--task", TWEET_TASK, "--labels", "negative,neutral,positive", "--hub"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"the Hugging Face Hub API at {closed_hub} cannot be reached" in err
    assert "without --hub" in err
    with pytest.raises(HubUnreachable):
        commands.hub_candidates(None, 5)


def test_catalog_refresh_fails_clearly_offline_and_leaves_the_catalog_untouched(
    cli: Any, closed_hub: str, tmp_path: Path, capsys: Any
) -> None:
    copy = tmp_path / "catalog.json"
    copy.write_bytes(Path(load_catalog().source).read_bytes())
    before = copy.read_bytes()
    assert cli(["catalog", "refresh", "--catalog", str(copy)]) == 2
    assert "cannot be reached" in capsys.readouterr().err
    assert copy.read_bytes() == before


def test_refresh_takes_the_hubs_figures_and_keeps_what_the_hub_does_not_report(catalog: Catalog) -> None:
    from huggingface_hub.hf_api import ModelInfo

    previous = catalog.get("cardiffnlp/twitter-roberta-base-sentiment")
    info = ModelInfo(id=previous.id, pipeline_tag="text-classification", tags=[], downloads=123,
                     config={"id2label": {"1": "LABEL_1", "0": "LABEL_0", "2": "LABEL_2"}, "model_type": "roberta"},
                     cardData={"license": "mit"}, safetensors={"parameters": {"F32": 124}, "total": 124})
    card = card_from_info(info, previous)
    assert card.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert (card.downloads, card.parameters, card.licence) == (123, 124, "mit")
    assert card.label_meanings == previous.label_meanings and card.description == previous.description
    bare = card_from_info(ModelInfo(id="x/y", pipeline_tag="text-classification", tags=[]))
    assert (bare.labels, bare.downloads, bare.parameters, bare.licence) == (None, None, None, None)


def test_models_for_another_language_are_listed_but_not_chosen():
    from autoannotator.planner.catalog import load_catalog

    cards = load_catalog().cards
    german = next(c for c in cards if c.id == "oliverguhr/german-sentiment-bert")
    assert not german.speaks("en") and german.speaks("de") and german.speaks(None)
    multilingual = next(c for c in cards if c.languages == ["multilingual"])
    assert multilingual.speaks("en")
