"""Sub-commands ``plan`` (choose specialists, write the pipeline config) and ``catalog refresh``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import yaml

from autoannotator.planner.catalog import Catalog, ModelCard, default_catalog_path, load_catalog, write_catalog
from autoannotator.planner.embed import Encoder, EndpointEncoder, MiniLMEncoder, catalog_embeddings
from autoannotator.planner.exceptions import PlannerError, ProposalError
from autoannotator.planner.hub import hub_candidates, hub_reachable, refresh_cards
from autoannotator.planner.labelmap import LLMLabelMapper
from autoannotator.planner.metrics import LABEL_MAPPINGS, PLANS
from autoannotator.planner.plan import (
    DEFAULT_BETA,
    DEFAULT_REVIEWER_MODEL,
    build_config,
    config_yaml,
    helm_values,
    next_steps,
    render_table,
)
from autoannotator.planner.rank import DEFAULT_MIN_SIMILARITY, Ranking, rank
from autoannotator.tools.configcheck import config_warnings

API_KEY_ENV = "AUTOANNOTATOR_LLM_API_KEY"
EXIT_NOT_WRITTEN = 3


def _labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if len(labels) < 2:
        raise argparse.ArgumentTypeError("--labels needs at least two comma-separated labels")
    return labels


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _overrides(pairs: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """``--map MODEL_ID:MODEL_LABEL=TASK_LABEL`` pairs grouped by model id."""
    grouped: dict[str, dict[str, str]] = {}
    for key, task_label in pairs:
        model_id, sep, model_label = key.rpartition(":")
        if not sep or not model_id or not model_label:
            raise ProposalError(f"--map {key}={task_label}: expected MODEL_ID:MODEL_LABEL=TASK_LABEL")
        grouped.setdefault(model_id, {})[model_label] = task_label
    return grouped


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``plan`` and ``catalog``."""
    plan = subparsers.add_parser(
        "plan", help="choose k specialists for a task from the model catalog and write the pipeline config",
        description="Rank text-classification models by similarity between the task description and theirs, "
        "keep k diverse ones, map their labels onto the task's and write a validated pipeline config.",
    )
    plan.add_argument("--task", required=True, help="what is annotated, in a sentence or two")
    plan.add_argument("--labels", required=True, type=_labels, help="task labels, comma-separated (a,b,c)")
    plan.add_argument("--label-desc", action="append", type=_pair, default=[], metavar="LABEL=TEXT",
                      help="what a label means (repeatable); goes into the config and the reviewer prompt")
    plan.add_argument("--name", default=None, help="task.name (default: from the description)")
    plan.add_argument("--k", type=int, default=3, help="number of specialists (default 3)")
    plan.add_argument("--language", default="en",
                      help="language of the texts (ISO 639-1, default en); models for other languages are not "
                      "chosen; 'any' turns the filter off")
    plan.add_argument("--min-similarity", type=float, default=DEFAULT_MIN_SIMILARITY,
                      help=f"below this a model is no match (default {DEFAULT_MIN_SIMILARITY})")
    plan.add_argument("--map", action="append", type=_pair, default=[], metavar="MODEL_ID:LABEL=TASK_LABEL",
                      help="settle a model label's mapping by hand (repeatable)")
    plan.add_argument("--catalog", type=Path, default=None, help=f"catalog JSON (default {default_catalog_path()})")
    plan.add_argument("--hub", action="store_true", help="also rank models listed by the Hugging Face Hub API")
    plan.add_argument("--hub-limit", type=int, default=100, help="how many of the hub's most downloaded to consider")
    plan.add_argument("--embeddings-url", default=None,
                      help="OpenAI-compatible base URL for /embeddings (default: local all-MiniLM-L6-v2)")
    plan.add_argument("--embeddings-model", default="text-embedding-3-small")
    plan.add_argument("--llm-url", default=os.environ.get("AUTOANNOTATOR_LLM_URL"),
                      help="OpenAI-compatible base URL; the LLM proposes mappings the rules leave open "
                      f"(key from ${API_KEY_ENV}; default $AUTOANNOTATOR_LLM_URL)")
    plan.add_argument("--llm-model", default="gpt-4o-mini")
    plan.add_argument("--beta", type=int, default=DEFAULT_BETA, help="trainer.beta: reviewed samples per round")
    plan.add_argument("--reviewer-model", default=DEFAULT_REVIEWER_MODEL,
                      help=f"reviewer.llm.model (default {DEFAULT_REVIEWER_MODEL}); priced from the shipped table")
    plan.add_argument("--own", action="store_true",
                      help="no catalog models: k specialists of your own, built by `autoannotator train` from a "
                      "labelled file or, without one, by the trainer's cold start")
    plan.add_argument("--out", type=Path, default=None, help="write the pipeline config here (YAML)")
    plan.add_argument("--emit", choices=["helm-values"], default=None, help="also write deployment values")
    plan.add_argument("--values-out", type=Path, default=None, help="where --emit helm-values writes")
    plan.add_argument("--show", type=int, default=None, help="rows of the ranking table (default 3k, at least 8)")
    plan.set_defaults(func=run_plan)

    catalog = subparsers.add_parser("catalog", help="the model catalog the planner ranks")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    refresh = catalog_sub.add_parser("refresh", help="rewrite the catalog with figures from the Hugging Face Hub")
    refresh.add_argument("--catalog", type=Path, default=None, help="catalog to read (default: the shipped one)")
    refresh.add_argument("--out", type=Path, default=None, help="where to write (default: over --catalog)")
    refresh.add_argument("--add-top", type=int, default=0, help="also add the N most downloaded models not listed")
    refresh.set_defaults(func=run_catalog_refresh)


def make_encoder(args: argparse.Namespace) -> Encoder:
    """The endpoint encoder when --embeddings-url is given, else the local MiniLM."""
    if args.embeddings_url:
        return EndpointEncoder(args.embeddings_url, args.embeddings_model, os.environ.get(API_KEY_ENV))
    return MiniLMEncoder()


def plan_ranking(args: argparse.Namespace, encoder: Encoder, catalog: Catalog) -> Ranking:
    """Rank the catalog (plus hub candidates with --hub) for the task in ``args``."""
    if args.k < 1:
        raise PlannerError("--k must be at least 1")
    cards: list[ModelCard] = list(catalog.cards)
    vectors = catalog_embeddings(catalog, encoder)
    if args.hub:
        known = {card.id for card in cards}
        extra = [card for card in hub_candidates(None, args.hub_limit) if card.id not in known]
        if extra:
            cards += extra
            vectors = np.vstack([vectors, encoder.encode([card.embedding_text() for card in extra])])
    task_vector = encoder.encode([args.task])[0]
    ranking = rank(cards, vectors, task_vector, args.task, args.labels, args.k, args.min_similarity,
                   _overrides(args.map), language=None if args.language == "any" else args.language)
    if args.llm_url:
        mapper = LLMLabelMapper(args.llm_url, args.llm_model, os.environ.get(API_KEY_ENV))
        for cand in ranking.chosen:
            cand.mapping = mapper.complete(cand.mapping, cand.card.id, cand.card.description, args.task)
    return ranking


def run_plan(args: argparse.Namespace) -> int:
    """``autoannotator plan``: print the ranking; write the config (and values) when asked and sound."""
    if args.own:
        ranking = Ranking(args.task, args.labels, args.k, args.min_similarity, [], [])
    else:
        catalog = load_catalog(args.catalog)
        ranking = plan_ranking(args, make_encoder(args), catalog)
        print(render_table(ranking, args.show))
        for note in ranking.notes:
            print(f"note: {note}")
    if ranking.no_good_match and not args.own:
        PLANS.labels(outcome="no_match").inc()
        print("plan: no good match; no config written (for specialists of your own, trained on a labelled file: "
              "plan --own, then autoannotator train)", file=sys.stderr)
        return EXIT_NOT_WRITTEN
    for cand in ranking.chosen:
        for entry in cand.mapping.entries:
            LABEL_MAPPINGS.labels(source=entry.source).inc()
    label_descriptions = dict(args.label_desc)
    try:
        config, models = build_config(ranking, args.task, label_descriptions, args.name, args.beta,
                                      args.reviewer_model, own=args.k if args.own else 0)
    except PlannerError:
        PLANS.labels(outcome="unmapped").inc()
        raise
    for cand in ranking.chosen:
        if cand.mapping.uncovered:
            print(f"note: {cand.card.id} never predicts {', '.join(cand.mapping.uncovered)}")
    if args.out:
        args.out.write_text(config_yaml(config, models, ranking), encoding="utf-8")
        print(f"wrote {args.out}")
    if args.emit == "helm-values":
        target = args.values_out or Path("values.yaml")
        target.write_text(yaml.safe_dump(helm_values(config), sort_keys=False, allow_unicode=True), encoding="utf-8")
        print(f"wrote {target} (helm upgrade --install ... -f {target})")
    if not config.reviewer.llm.prices:
        print(f"note: no shipped price for reviewer model {args.reviewer_model!r}: set reviewer.llm.prices, "
              "or its spend counts as $0")
    for warning in config_warnings(config):
        print(f"warning: {warning}")
    print("next steps:")
    label_maps = {spec.name: dict(spec.label_map) for spec in config.specialists}
    hub = bool(models) and hub_reachable()
    for step in next_steps(models, str(args.out or "pipeline.yaml"), label_maps, hub=hub):
        print(f"  {step}")
    if models and not hub:
        print("  (the catalog models' download from the Hugging Face Hub is left out: the Hub is not reachable)")
    PLANS.labels(outcome="planned").inc()
    return 0


def run_catalog_refresh(args: argparse.Namespace) -> int:
    """``autoannotator catalog refresh``: the catalog's figures from the hub, written atomically."""
    catalog = load_catalog(args.catalog)
    cards = refresh_cards(list(catalog.cards), args.add_top)
    target = args.out or Path(catalog.source)
    note = ("Public facts about text-classification models on the Hugging Face Hub, refreshed from the hub API; "
            "null: not reported.")
    write_catalog(target, cards, note)
    print(f"wrote {len(cards)} models to {target}")
    return 0
