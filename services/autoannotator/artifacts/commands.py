"""Sub-commands ``export`` and ``models add | list | show | promote | rollback | clean``.

``export`` turns a Hugging Face classifier folder into a specialist artifact and prints the
parity report. ``models`` manages the versions in the configured store; ``promote`` and
``rollback`` also announce the new current version on ``model-releases`` so that running
specialists switch to it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from autoannotator.artifacts.exceptions import ReleaseError
from autoannotator.artifacts.manifest import Manifest, task_index
from autoannotator.artifacts.release import announce, release_for
from autoannotator.artifacts.store import ModelStore, store_for
from autoannotator.config import PipelineConfig
from autoannotator.exceptions import BrokerError, ConfigError
from autoannotator.runtime import bootstrap_for, load
from autoannotator.stream.kafka import ensure_topics
from autoannotator.wire import RELEASES_TOPIC


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``models``."""
    export = subparsers.add_parser("export", help="export a Hugging Face classifier folder to a specialist artifact")
    export.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="Hugging Face model folder")
    export.add_argument("--out", required=True, type=Path, help="artifact folder to create (must not hold files)")
    labels = export.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="task labels in order, comma-separated (a,b,c)")
    labels.add_argument("--config", type=Path, help="take the task labels from this pipeline config")
    export.add_argument("--label-map", default=None,
                        help="model label -> task label, 'k=v,...' (default: match names case-insensitively)")
    precision = export.add_mutually_exclusive_group()
    precision.add_argument("--int8", action="store_true", help="dynamic int8 quantisation")
    precision.add_argument("--fp16", action="store_true", help="fp16 conversion (for CUDA)")
    export.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=None,
                        help="fuse attention and LayerNorm with ONNX Runtime's transformer optimiser "
                        "(default: on with --fp16, off otherwise)")
    export.add_argument("--max-length", type=int, default=128, help="tokenizer truncation length")
    export.add_argument("--exporter", choices=["optimum", "torch.onnx"], default="optimum",
                        help="ONNX exporter to try first (the other is never tried after torch.onnx)")
    export.add_argument("--no-weights", action="store_true", help="do not copy the weights (no fine-tuning later)")
    export.set_defaults(func=cmd_export)

    models = subparsers.add_parser("models", help="manage model versions in the store")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="publish an artifact as the next version and make it current")
    _common(add, name_required=True)
    add.add_argument("artifact_dir", metavar="ARTIFACT",
                     help="artifact folder, or its fsspec URI (s3://..., gs://...; read with store.options)")
    add.add_argument("--if-empty", action="store_true",
                     help="do nothing when the specialist already has a current version (seeding on install)")
    add.add_argument("--no-current", action="store_true", help="publish only; leave the current version")
    add.add_argument("--announce", action="store_true", help="also announce it on model-releases")
    add.set_defaults(func=cmd_add)

    lst = sub.add_parser("list", help="versions per specialist")
    _common(lst, name_required=False)
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="a version's manifest (the current one by default) and the history")
    _common(show, name_required=True)
    show.add_argument("--version", default=None)
    show.set_defaults(func=cmd_show)

    promote = sub.add_parser("promote", help="make a version current and announce it")
    _common(promote, name_required=True)
    promote.add_argument("--version", required=True)
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser("rollback", help="return to the previous current version and announce it")
    _common(rollback, name_required=True)
    rollback.set_defaults(func=cmd_rollback)

    clean = sub.add_parser("clean", help="delete folders left by interrupted publishes (never served)")
    _common(clean, name_required=True)
    clean.set_defaults(func=cmd_clean)


def _common(parser: argparse.ArgumentParser, *, name_required: bool) -> None:
    parser.add_argument("--config", required=True, type=Path, help="pipeline config (YAML)")
    parser.add_argument("--name", required=name_required, default=None, help="specialist name")


def parse_label_map(text: str) -> dict[str, str]:
    """``'LABEL_0=negative,LABEL_1=positive'`` -> dict; a malformed pair is a :class:`ConfigError`."""
    mapping: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--label-map: {pair!r} is not model_label=task_label")
        mapping[key.strip()] = value.strip()
    return mapping


def cmd_export(args: argparse.Namespace) -> int:
    """``autoannotator export``: export, check parity, print the report."""
    from autoannotator.artifacts.export import export_model

    if args.config is not None:
        task_labels = list(load(args).task.labels)
    else:
        task_labels = [label.strip() for label in args.labels.split(",") if label.strip()]
        if len(task_labels) < 2:
            raise ConfigError("--labels: give at least two comma-separated labels")
    label_map = parse_label_map(args.label_map) if args.label_map else None
    report = export_model(
        args.model_dir,
        args.out,
        task_labels=task_labels,
        label_map=label_map,
        max_length=args.max_length,
        int8=args.int8,
        fp16=args.fp16,
        optimize=args.optimize,
        include_weights=not args.no_weights,
        prefer=args.exporter,
    )
    print(report.summary())
    return 0


def _local_artifact(location: str, config: PipelineConfig, tmp: Path) -> Path:
    """The artifact folder itself, or a copy of a remote one (``s3://``, ``gs://``, ...) fetched into ``tmp``."""
    if "://" not in location or location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    import fsspec

    fs, root = fsspec.core.url_to_fs(location, **config.store.options)
    root = root.rstrip("/")
    files = [f for f in fs.find(root) if not f.endswith("/")]
    if not files:
        raise ConfigError(f"ARTIFACT {location}: no files there (expected an artifact folder with manifest.json)")
    for remote in files:
        local = tmp / Path(remote[len(root):].lstrip("/"))
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))
    return tmp


def cmd_add(args: argparse.Namespace) -> int:
    """``models add``: publish (parent: the current version) and make it current."""
    config = load(args)
    store = store_for(config)
    if args.if_empty and store.current(args.name) is not None:
        print(f"{args.name}: current version is {store.current(args.name)}; --if-empty: nothing added")
        return 0
    with tempfile.TemporaryDirectory(prefix="aa-artifact-") as tmp:
        artifact_dir = _local_artifact(str(args.artifact_dir), config, Path(tmp))
        manifest = Manifest.read(artifact_dir)
        # Refuse an artifact whose labels cannot be served in this pipeline's label order.
        override = next((s.label_map for s in config.specialists if s.name == args.name and s.label_map), None)
        task_index(manifest, config.task.labels, override)
        stored = store.publish(args.name, artifact_dir, parent_version=store.current(args.name))
    print(f"{args.name} {stored.version}: published to {store.artifact_uri(args.name, stored.version)} "
          f"(sha256 {stored.sha256[:12]}, weights {'yes' if stored.has_weights else 'no'})")
    if not args.no_current:
        store.set_current(args.name, stored.version)
        print(f"{args.name}: current version is {stored.version}")
        if args.announce:
            _announce(config, store, args.name, stored.version, "release")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``models list``: one line per version; ``*`` marks the current one."""
    store = store_for(load(args))
    names = [args.name] if args.name else store.specialists()
    print(f"{'specialist':<16} {'version':<8} {'cur':<3} {'parent':<8} {'created (UTC)':<19} {'precision':<9} "
          f"{'sha256':<12} metrics")
    for name in names:
        current = store.current(name)
        for version in store.versions(name):
            m = store.manifest(name, version)
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.created_ms / 1000))
            metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(m.metrics.items()))
            print(f"{name:<16} {version:<8} {'*' if version == current else '':<3} {m.parent_version or '-':<8} "
                  f"{created:<19} {m.precision:<9} {m.sha256[:12]:<12} {metrics}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``models show``: the manifest as JSON, plus current version and history."""
    store = store_for(load(args))
    version = args.version or store.current(args.name) or store.latest(args.name)
    if version is None:
        raise ConfigError(f"--name: specialist {args.name!r} has no versions in {store.uri}")
    doc = {
        "manifest": json.loads(store.manifest(args.name, version).to_json()),
        "artifact_uri": store.artifact_uri(args.name, version),
        "current": store.current(args.name),
        "history": store.history_entries(args.name),
        "partial_versions": store.partial_versions(args.name),
    }
    print(json.dumps(doc, indent=2))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """``models promote``: make the version current and announce it (kind ``release``)."""
    config = load(args)
    store = store_for(config)
    store.set_current(args.name, args.version)
    print(f"{args.name}: current version is {args.version}")
    _announce(config, store, args.name, args.version, "release")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """``models rollback``: return to the previous current version and announce it (kind ``rollback``)."""
    config = load(args)
    store = store_for(config)
    before = store.current(args.name)
    version = store.rollback(args.name)
    print(f"{args.name}: rolled back from {before} to {version}")
    _announce(config, store, args.name, version, "rollback")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    """``models clean``: remove manifest-less version folders of one specialist."""
    store = store_for(load(args))
    removed = store.clean_partial(args.name)
    print(f"{args.name}: removed partial versions {removed}" if removed else f"{args.name}: no partial versions")
    return 0


def _announce(config: PipelineConfig, store: ModelStore, name: str, version: str, kind: str) -> None:
    # A release must reach running specialists: never start a private embedded broker for it.
    try:
        bootstrap = bootstrap_for(config, start_embedded=False)
        ensure_topics(config.kafka, bootstrap, [RELEASES_TOPIC])
        announce(config, bootstrap, release_for(store, name, version, kind))
    except BrokerError as exc:
        raise ReleaseError(f"{name}: the store's current version is {version}, but announcing it failed ({exc}); "
                           f"running specialists still serve the old one: rerun "
                           f"`autoannotator models promote --name {name} --version {version}`") from exc
    print(f"{name}: announced {version} ({kind}) on {config.kafka.topic(RELEASES_TOPIC)}")
