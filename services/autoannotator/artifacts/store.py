"""Versioned, immutable model artifacts under one fsspec URI (``file://`` by default, ``s3://`` via s3fs).

Layout::

    <store>/<specialist>/v0001/{model.onnx, tokenizer/..., weights/..., manifest.json}
    <store>/<specialist>/v0002/...
    <store>/<specialist>/current.json      # {"current": "v0002", "stack": [...], "history": [...]}

**A version exists when its manifest.json does.** :meth:`ModelStore.publish` uploads every other
file first and the manifest last, so a crash mid-publish leaves a manifest-less folder that
:meth:`~ModelStore.versions` never lists (:meth:`~ModelStore.clean_partial` removes it) and
whose number is never reused. Versions are never overwritten.

``current.json`` is the serving pointer: ``stack`` is the chain of promotions that
:meth:`~ModelStore.rollback` walks back, ``history`` every change of the current version.
One writer per specialist is assumed (the trainer, or an operator's ``models`` command): object
stores offer no atomic "create if absent", so two concurrent publishers could race on a number.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec

from autoannotator.artifacts.exceptions import (
    IntegrityError,
    ManifestError,
    ModelStoreError,
    VersionNotFound,
)
from autoannotator.artifacts.manifest import MANIFEST_FILE, WEIGHTS_DIR, Manifest, file_sha256
from autoannotator.artifacts.metrics import FETCH_SECONDS, INTEGRITY_FAILURES, STORE_OPERATIONS
from autoannotator.wire import now_ms

if TYPE_CHECKING:
    from autoannotator.config import PipelineConfig

log = logging.getLogger(__name__)

POINTER_FILE = "current.json"
_VERSION = re.compile(r"^v(\d{4,})$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def version_name(number: int) -> str:
    """``3`` -> ``"v0003"``."""
    return f"v{number:04d}"


def version_number(version: str) -> int:
    """``"v0003"`` -> ``3``; raises :class:`VersionNotFound` for anything else."""
    match = _VERSION.match(version)
    if not match:
        raise VersionNotFound(f"{version!r} is not a version name (v0001, v0002, ...)")
    return int(match.group(1))


class ModelStore:
    """The model store at ``uri`` (any fsspec URI); ``options`` are the filesystem's storage options."""

    def __init__(self, uri: str, options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri
        self.options = dict(options or {})
        try:
            self.fs, self.root = fsspec.core.url_to_fs(uri, **self.options)
        except (ImportError, ValueError, TypeError) as exc:
            raise ModelStoreError(f"store.uri {uri!r}: cannot open: {exc}") from exc
        self.root = self.root.rstrip("/")
        self._local = "file" in _protocols(self.fs)

    # -- naming -------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def artifact_uri(self, name: str, version: str) -> str:
        """Full URI of one version's folder (what a release announces)."""
        _check_name(name)
        version_number(version)
        if self._local:
            return f"file://{self._path(name, version)}"
        protocol = _protocols(self.fs)[0]
        return f"{protocol}://{self._path(name, version)}"

    @classmethod
    def from_artifact_uri(cls, artifact_uri: str, options: Mapping[str, Any] | None = None
                          ) -> tuple[ModelStore, str, str]:
        """Split ``<store>/<name>/<version>`` into (the store, name, version)."""
        store_uri, _, rest = artifact_uri.rstrip("/").rpartition("/")
        store_uri, _, name = store_uri.rpartition("/")
        version_number(rest)
        _check_name(name)
        return cls(store_uri, options), name, rest

    # -- reading ------------------------------------------------------------------------------

    def specialists(self) -> list[str]:
        """Names that have at least one complete version."""
        return sorted(name for name in self._children(self.root) if _NAME.match(name) and self.versions(name))

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name`` (those with a manifest.json), oldest first."""
        _check_name(name)
        found = [v for v in self._numbered(name) if self.fs.exists(self._path(name, v, MANIFEST_FILE))]
        return found

    def partial_versions(self, name: str) -> list[str]:
        """Version folders without a manifest: left by an interrupted publish, never served."""
        _check_name(name)
        return [v for v in self._numbered(name) if not self.fs.exists(self._path(name, v, MANIFEST_FILE))]

    def manifest(self, name: str, version: str) -> Manifest:
        """The manifest of one complete version."""
        _check_name(name)
        version_number(version)
        path = self._path(name, version, MANIFEST_FILE)
        try:
            with self.fs.open(path, "rb") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise VersionNotFound(f"{name} {version}: no such version in {self.uri}") from None
        return Manifest.from_json(text, f"{self.uri}/{name}/{version}/{MANIFEST_FILE}")

    def latest(self, name: str) -> str | None:
        """The newest complete version, or None."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    def current(self, name: str) -> str | None:
        """The version specialists should serve, or None when none was set."""
        return self._pointer(name).get("current")

    def history(self, name: str) -> list[str]:
        """Every version that became current, in order (a rollback appends the version it returns to)."""
        return [entry["version"] for entry in self._pointer(name).get("history", [])]

    def history_entries(self, name: str) -> list[dict[str, Any]]:
        """The pointer's history with details: version, kind (promote / rollback), at_ms."""
        return list(self._pointer(name).get("history", []))

    def previous(self, name: str) -> str | None:
        """The version a rollback would return to, or None."""
        stack = self._pointer(name).get("stack", [])
        return stack[-2] if len(stack) >= 2 else None

    # -- writing ------------------------------------------------------------------------------

    def publish(
        self,
        name: str,
        artifact_dir: str | Path,
        *,
        parent_version: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Manifest:
        """Copy a local artifact in as the next version of ``name``; returns the stored manifest.

        The artifact's manifest is checked and its ONNX file re-hashed first (a mismatch raises
        :class:`IntegrityError`). ``metrics`` are merged over the artifact's; ``parent_version``
        defaults to the artifact manifest's. The version becomes visible only when its manifest
        is written, last. Does not change the current version (see :meth:`set_current`).
        """
        with _counted("publish"):
            return self._publish(name, Path(artifact_dir), parent_version, metrics)

    def _publish(self, name: str, artifact_dir: Path, parent_version: str | None,
                 metrics: Mapping[str, float] | None) -> Manifest:
        _check_name(name)
        manifest = Manifest.read(artifact_dir)
        onnx = artifact_dir / manifest.onnx_file
        if not onnx.is_file():
            raise ManifestError(f"{artifact_dir}: manifest names {manifest.onnx_file}, which is missing")
        actual = file_sha256(onnx)
        if actual != manifest.sha256:
            INTEGRITY_FAILURES.inc()
            raise IntegrityError(f"{onnx}: sha256 {actual} does not match the manifest's {manifest.sha256}")
        if parent_version is not None:
            self.manifest(name, parent_version)  # the parent must exist
        files = sorted(p for p in artifact_dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
        numbers = [version_number(v) for v in self._numbered(name)]
        version = version_name(max(numbers, default=0) + 1)
        target = self._path(name, version)
        if self.fs.exists(target):
            raise ModelStoreError(f"{name} {version}: folder already exists in {self.uri} (concurrent publish?)")
        stored = replace(
            manifest,
            specialist=name,
            version=version,
            parent_version=parent_version if parent_version is not None else manifest.parent_version,
            created_ms=now_ms(),
            metrics={**manifest.metrics, **{k: float(v) for k, v in (metrics or {}).items()}},
            has_weights=any(p.relative_to(artifact_dir).parts[0] == WEIGHTS_DIR for p in files),
            files={},
        )
        for path in files:
            rel = path.relative_to(artifact_dir).as_posix()
            stored.files[rel] = actual if rel == manifest.onnx_file else file_sha256(path)
            self._put(path, self._path(name, version, rel))
        stored.validate(f"{name} {version}")
        # The commit point: only now does the version exist.
        self._write_text(self._path(name, version, MANIFEST_FILE), stored.to_json())
        log.info("published %s %s to %s (sha256 %s)", name, version, self.uri, stored.sha256[:12])
        return stored

    def set_current(self, name: str, version: str, *, kind: str = "promote") -> None:
        """Make ``version`` the one specialists serve (it must be complete); recorded in the history."""
        with _counted("set_current"):
            self.manifest(name, version)
            pointer = self._pointer(name)
            stack = [v for v in pointer.get("stack", []) if v != version] + [version]
            self._set_pointer(name, pointer, version, stack, kind)

    def rollback(self, name: str) -> str:
        """Return to the version that was current before the current one; returns it."""
        with _counted("rollback"):
            pointer = self._pointer(name)
            stack = list(pointer.get("stack", []))
            if len(stack) < 2:
                raise ModelStoreError(f"{name}: no earlier version to roll back to (history {self.history(name)})")
            stack.pop()
            version = stack[-1]
            self.manifest(name, version)
            self._set_pointer(name, pointer, version, stack, "rollback")
            return version

    def clean_partial(self, name: str) -> list[str]:
        """Delete the folders of interrupted publishes; returns their versions (numbers stay unused)."""
        partial = self.partial_versions(name)
        for version in partial:
            self.fs.rm(self._path(name, version), recursive=True)
            log.info("removed partial version %s %s", name, version)
        return partial

    def fetch(self, name: str, version: str, dest_dir: str | Path, *, weights: bool = True) -> Path:
        """Copy one version into the local folder ``dest_dir`` and verify every file's sha256.

        Downloads into a staging folder beside ``dest_dir`` and renames it when verified, so
        ``dest_dir`` is either absent or complete. When ``dest_dir`` already holds this exact
        version it is reused. ``weights=False`` skips ``weights/`` (what serving needs). A
        mismatch raises :class:`IntegrityError` and leaves nothing behind.
        """
        started = time.monotonic()
        with _counted("fetch"):
            path = self._fetch(name, version, Path(dest_dir), weights)
        FETCH_SECONDS.observe(time.monotonic() - started)
        return path

    def _fetch(self, name: str, version: str, dest: Path, weights: bool) -> Path:
        manifest = self.manifest(name, version)
        if dest.exists():
            if _same_version(dest, manifest, weights):
                return dest
            raise ModelStoreError(f"{dest} exists and does not hold {name} {version}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.parent / f".{dest.name}.fetch-{uuid.uuid4().hex[:8]}"
        wanted = dict(manifest.files) or {manifest.onnx_file: manifest.sha256}
        if not weights:
            wanted = {rel: sha for rel, sha in wanted.items() if not rel.startswith("weights/")}
        try:
            for rel, sha in wanted.items():
                local = staging / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.fs.get_file(self._path(name, version, rel), str(local))
                except FileNotFoundError:
                    raise IntegrityError(f"{name} {version}: {rel} is listed in the manifest but missing") from None
                actual = file_sha256(local)
                if actual != sha:
                    INTEGRITY_FAILURES.inc()
                    raise IntegrityError(f"{name} {version}: {rel} has sha256 {actual}, manifest says {sha}")
            if manifest.files.get(manifest.onnx_file, manifest.sha256) != manifest.sha256:
                raise IntegrityError(f"{name} {version}: manifest sha256 disagrees with its own file list")
            local = manifest if weights or not manifest.has_weights else replace(
                manifest, has_weights=False, files={r: h for r, h in manifest.files.items() if r in wanted})
            local.write(staging)
            staging.rename(dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest

    # -- internals ----------------------------------------------------------------------------

    def _children(self, path: str) -> list[str]:
        self.fs.invalidate_cache(path)  # other processes write to the store
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"]

    def _numbered(self, name: str) -> list[str]:
        found = [v for v in self._children(self._path(name)) if _VERSION.match(v)]
        return sorted(found, key=version_number)

    def _put(self, local: Path, remote: str) -> None:
        if self._local:
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), remote)

    def _write_text(self, remote: str, text: str) -> None:
        data = text.encode("utf-8")
        if self._local:
            # Local files are renamed into place so a reader never sees half a file; object stores'
            # PUT is atomic already.
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{remote}.tmp-{uuid.uuid4().hex[:8]}"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, remote)
        else:
            self.fs.pipe_file(remote, data)

    def _pointer(self, name: str) -> dict[str, Any]:
        _check_name(name)
        path = self._path(name, POINTER_FILE)
        self.fs.invalidate_cache(self._path(name))
        try:
            with self.fs.open(path, "rb") as fh:
                doc = json.loads(fh.read())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise ModelStoreError(f"{self.uri}/{name}/{POINTER_FILE}: not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ModelStoreError(f"{self.uri}/{name}/{POINTER_FILE}: expected a JSON object")
        return doc

    def _set_pointer(self, name: str, pointer: dict[str, Any], version: str, stack: list[str], kind: str) -> None:
        history = [*pointer.get("history", []), {"version": version, "kind": kind, "at_ms": now_ms()}]
        doc = {"current": version, "stack": stack, "history": history}
        self._write_text(self._path(name, POINTER_FILE), json.dumps(doc, indent=2) + "\n")
        log.info("%s: current version is now %s (%s)", name, version, kind)


def store_for(config: PipelineConfig) -> ModelStore:
    """The model store the pipeline config names (``store.uri`` with its fsspec ``store.options``)."""
    return ModelStore(config.store.uri, config.store.options)


@contextmanager
def _counted(op: str) -> Iterator[None]:
    """Count one store operation by result; the exception (if any) propagates unchanged."""
    try:
        yield
    except BaseException:
        STORE_OPERATIONS.labels(op, "error").inc()
        raise
    STORE_OPERATIONS.labels(op, "ok").inc()


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelStoreError(f"specialist name {name!r} must match {_NAME.pattern}")


def _same_version(dest: Path, manifest: Manifest, weights: bool) -> bool:
    try:
        local = Manifest.read(dest)
    except ManifestError:
        return False
    if weights and manifest.has_weights and not local.has_weights:
        return False
    onnx = dest / manifest.onnx_file
    return (local.specialist, local.version, local.sha256) == (manifest.specialist, manifest.version,
                                                               manifest.sha256) \
        and onnx.is_file() and file_sha256(onnx) == manifest.sha256
