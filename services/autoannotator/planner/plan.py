"""Turn a ranking into what the pipeline runs: a validated config, Helm values, a table and next steps.

The config is checked with :func:`autoannotator.config.parse_config` before anything is written, and
it is never written while a chosen model has labels without a task label: the error lists them and
how to settle them (``--map``, or an LLM), because a silently guessed mapping would train and vote on
wrong classes (the defect of the paper's code that DESIGN.md names first).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from autoannotator.config import PipelineConfig, parse_config
from autoannotator.planner.exceptions import UnmappedLabels
from autoannotator.planner.prices import price_for
from autoannotator.planner.rank import Candidate, Ranking

DEFAULT_BETA = 2000
# The highest error of auto-accepted labels a planned config accepts (voter.target_error).
DEFAULT_TARGET_ERROR = 0.05
DEFAULT_REVIEWER_MODEL = "gpt-4o-mini"
# Specialists of your own (plan --own) are named as `autoannotator train` names them by default
# (<base>-1..k, base "minilm"): `train` then builds exactly these, and a cold start builds them too.
OWN_STEM = "minilm"
# The chart allows names of at most 41 characters (helm/autoannotator/values.schema.json).
MAX_NAME = 41


def specialist_name(model_id: str, taken: set[str]) -> str:
    """A valid, unique specialist name from a hub id (``cardiffnlp/twitter-roberta-base`` -> its last part)."""
    base = re.sub(r"[^a-z0-9_-]+", "-", model_id.rsplit("/", 1)[-1].lower()).strip("-_") or "specialist"
    base = base[:MAX_NAME].rstrip("-_")
    name, n = base, 2
    while name in taken:
        suffix = f"-{n}"
        name = base[: MAX_NAME - len(suffix)].rstrip("-_") + suffix
        n += 1
    taken.add(name)
    return name


def task_name(description: str) -> str:
    """A short slug for ``task.name`` from the description's first words."""
    words = re.findall(r"[a-z0-9]+", description.lower())[:5]
    return "-".join(words) or "task"


def reviewer_instructions(description: str, labels: list[str], label_descriptions: dict[str, str]) -> str:
    """The reviewer's prompt: the task and the closed label set, one line per label."""
    lines = [f"Task: {description.strip()}", f"Answer with exactly one of these labels: {', '.join(labels)}."]
    for label in labels:
        if label in label_descriptions:
            lines.append(f"- {label}: {label_descriptions[label]}")
    lines.append("Never answer with a label outside this set.")
    return "\n".join(lines)


def check_mappable(chosen: list[Candidate]) -> None:
    """Refuse to write a config while any chosen model has unmapped labels."""
    problems = []
    for cand in chosen:
        if cand.mapping.labels_unknown:
            problems.append(f"{cand.card.id}: its labels are not recorded in the catalog (read its config.json)")
        for entry in cand.mapping.unmapped:
            problems.append(f"{cand.card.id}: {entry.model_label!r} unmapped ({entry.reason})")
    if problems:
        raise UnmappedLabels(
            "not writing a config with unmapped labels (they would be guessed):\n  " + "\n  ".join(problems)
            + "\nsettle them with --map 'MODEL_ID:MODEL_LABEL=TASK_LABEL', with --llm-url, or choose other models"
        )


def build_config(
    ranking: Ranking,
    description: str,
    label_descriptions: dict[str, str] | None = None,
    name: str | None = None,
    beta: int = DEFAULT_BETA,
    reviewer_model: str = DEFAULT_REVIEWER_MODEL,
    own: int = 0,
) -> tuple[PipelineConfig, dict[str, str]]:
    """The pipeline config for the chosen models, validated; and specialist name -> hub model id.

    ``own`` > 0 (``plan --own``): that many specialists of your own instead (``minilm-1..k``, no
    model yet), built by ``autoannotator train`` from a labelled file or, without one, by the
    trainer's cold start. The reviewer's price comes from the shipped table (:mod:`.prices`) when
    the model is in it.
    """
    check_mappable(ranking.chosen)
    price = price_for(reviewer_model)
    label_descriptions = label_descriptions or {}
    taken: set[str] = set()
    specialists, models = [], {}
    for cand in ranking.chosen:
        spec_name = specialist_name(cand.card.id, taken)
        models[spec_name] = cand.card.id
        specialists.append({"name": spec_name, "label_map": cand.mapping.label_map})
    specialists += [{"name": f"{OWN_STEM}-{i + 1}"} for i in range(own)]
    k = len(specialists)
    document: dict[str, Any] = {
        "task": {
            "name": name or task_name(description),
            "description": description,
            "labels": ranking.labels,
            "label_descriptions": label_descriptions,
        },
        "specialists": specialists,
        # Error-bounded routing, never the paper's vote rule: with k=1, or two labels and k=3, the vote
        # rule (accept when U = 1 - max_votes/k < eps) can never send a record to review, while
        # error-bounded reviews a version set until audits certify a threshold for target_error.
        "voter": {"policy": "error-bounded", "target_error": DEFAULT_TARGET_ERROR, "quorum": min(2, k) if k else 1},
        "reviewer": {
            "llm": {"model": reviewer_model, "prices": {reviewer_model: price} if price else {}},
            "prompt": {"instructions": reviewer_instructions(description, ranking.labels, label_descriptions)},
        },
        "trainer": {"beta": beta},
    }
    return parse_config(document, "planned config"), models


def config_yaml(config: PipelineConfig, models: dict[str, str], ranking: Ranking) -> str:
    """The config as YAML, headed by a comment naming each specialist's hub model and its similarity."""
    header = ["# Written by `autoannotator plan`. Specialists and the hub models they come from:"]
    by_id = {c.card.id: c for c in ranking.chosen}
    for spec, model_id in models.items():
        header.append(f"#   {spec}: {model_id} (similarity {by_id[model_id].similarity:.3f})")
    body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body


def helm_values(config: PipelineConfig, replicas: int = 1) -> dict[str, Any]:
    """Values for helm/autoannotator matching its values.yaml: ``pipeline`` sections and ``specialists``.

    The chart fills in kafka, store, metrics, specialists and data_dir itself, so ``pipeline`` carries only
    task, voter, reviewer prompt and trainer; each specialist's label map goes in its ``config``.
    """
    dumped = config.model_dump(mode="json")
    return {
        "pipeline": {
            "task": dumped["task"],
            "voter": dumped["voter"],
            "reviewer": {"prompt": dumped["reviewer"]["prompt"]},
            "trainer": {"beta": dumped["trainer"]["beta"]},
        },
        "specialists": [
            {"name": spec.name, "replicas": replicas, "gpu": 0, "config": {"label_map": dict(spec.label_map)}}
            for spec in config.specialists
        ],
    }


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.0f}{unit}"
    return str(n)


def render_table(ranking: Ranking, show: int | None = None) -> str:
    """The ranking as a fixed-width table; chosen models are marked ``*``."""
    rows = [("", "model", "sim", "downloads", "params", "licence", "labels", "proposed mapping / flags")]
    listed = ranking.candidates[: show if show is not None else max(ranking.k * 3, 8)]
    for cand in listed:
        labels = ",".join(cand.card.labels) if cand.card.labels is not None else "?"
        if len(labels) > 40:
            labels = labels[:37] + "..."
        note = cand.mapping.summary()
        if cand.flags:
            note += "  [" + "; ".join(cand.flags) + "]"
        rows.append((
            "*" if cand in ranking.chosen else "", cand.card.id, f"{cand.similarity:.3f}", _human(cand.card.downloads),
            _human(cand.card.parameters), cand.card.licence or "-", labels, note,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def next_steps(models: dict[str, str], config_path: str, label_maps: dict[str, dict[str, str]], *,
               hub: bool = False) -> list[str]:
    """What the user runs next, every step offline unless ``hub`` (the Hub answered).

    Specialists of your own come two ways: ``train`` on a labelled file, or a cold start (``up``
    without models: the reviewer labels everything until the trainer's first round builds them).
    The catalog models' download is offered only when the Hub is reachable: offline it would fail.
    """
    steps = [
        f"autoannotator train --config {config_path} --data labelled.csv   "
        "# with a labelled CSV/JSONL of text,label: your own specialists (offline"
        + ("; replaces the specialists above)" if models else ")"),
    ]
    if hub:
        for spec, model_id in models.items():
            label_map = ",".join(f"{k}={v}" for k, v in label_maps.get(spec, {}).items())
            steps.append(
                f"huggingface-cli download {model_id} --local-dir models/{spec} && "
                f"autoannotator export models/{spec} --out artifacts/{spec} --config {config_path} "
                f"--label-map '{label_map}' && "
                f"autoannotator models add --config {config_path} --name {spec} artifacts/{spec}"
            )
    steps.append(f"autoannotator check-config --config {config_path} --quiet")
    if models:
        steps.append(f"autoannotator up --config {config_path}")
    else:
        steps.append(f"autoannotator up --config {config_path}   # without train: a cold start (the reviewer "
                     "labels every record until trainer.beta reviewed records build the specialists)")
    return steps
