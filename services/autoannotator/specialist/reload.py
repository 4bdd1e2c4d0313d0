"""Hot reload: follow ``model-releases`` and load new versions beside the serving one.

:class:`ReleaseFollower` reads the broadcast topic without a consumer group (every replica sees
every release), keeps the releases for its own specialist, fetches each version from the model
store (which verifies the sha256 of the manifest), checks it against the sha256 the release
announced, loads it and runs one smoke prediction — all in its own thread, while the old engine
keeps serving. The service picks the loaded engine up with :meth:`ReleaseFollower.take` between
batches. A release that fails any step leaves the old version serving, with an error log and the
``autoannotator_specialist_reloads_total{result=...}`` metric.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from autoannotator.artifacts.engine import InferenceEngine, serving_engine
from autoannotator.artifacts.exceptions import EngineError, IntegrityError, ModelStoreError
from autoannotator.artifacts.manifest import Manifest, file_sha256
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig
from autoannotator.exceptions import BadInput
from autoannotator.specialist.exceptions import ReloadError, SpecialistError
from autoannotator.specialist.metrics import RELOADS
from autoannotator.stream.reader import TopicReader
from autoannotator.wire import RELEASES_TOPIC, ModelRelease, RawMessage, decode

log = logging.getLogger(__name__)

SMOKE_TEXT = "smoke test of a freshly loaded model"


class ReleaseFollower:
    """Fetches, verifies and loads a specialist's new model versions in a background thread."""

    def __init__(
        self,
        config: PipelineConfig,
        name: str,
        store: ModelStore,
        *,
        bootstrap: str,
        cache_dir: str | Path | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.config = config
        self.name = name
        self.store = store
        config.specialist(name)  # fails early, naming the field, for an unknown name
        self._bootstrap = bootstrap
        self._cache = Path(cache_dir) if cache_dir else Path(config.data_dir) / "specialists" / name
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._pending: InferenceEngine | None = None
        self._latest_version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: TopicReader | None = None

    # -- start-up ------------------------------------------------------------------------------------
    def start(self) -> ReleaseFollower:
        """Start reading releases from the topic's end (call before :meth:`load_current`: no gap)."""
        self._reader = TopicReader(self.config.kafka, self._bootstrap, RELEASES_TOPIC, from_beginning=False)
        self._reader.poll(0.1)  # fixes the start position before the store's current version is read
        self._thread = threading.Thread(target=self._follow, name=f"releases-{self.name}", daemon=True)
        self._thread.start()
        return self

    def load_current(self) -> InferenceEngine:
        """Fetch, verify and load the store's current version of this specialist (start-up)."""
        engine = self.load_current_or_none()
        if engine is None:
            raise SpecialistError(
                f"specialists.{self.name}: the model store {self.store.uri} has no current version of it "
                "(add one with `autoannotator models add`)"
            )
        return engine

    def load_current_or_none(self) -> InferenceEngine | None:
        """The current version loaded, or None when the store has none yet (cold start).

        An unreadable store still raises :class:`SpecialistError`: only a store that answers
        "no version" starts a specialist without a model.
        """
        try:
            version = self.store.current(self.name)
        except ModelStoreError as exc:
            raise SpecialistError(f"specialists.{self.name}: cannot read the model store: {exc}") from exc
        if version is None:
            return None
        engine = self.load(version)
        with self._lock:
            self._latest_version = engine.version
        RELOADS.labels(self.name, "ok").inc()
        return engine

    # -- the service's side ----------------------------------------------------------------------------
    def take(self) -> InferenceEngine | None:
        """The newest loaded engine not yet handed over, or None."""
        with self._lock:
            engine, self._pending = self._pending, None
        return engine

    def retire(self, engine: InferenceEngine) -> None:
        """Delete the fetched files of an engine that no longer serves (the session is in memory)."""
        folder = engine.artifact_dir
        if folder is not None and folder.parent.parent == self._cache:
            shutil.rmtree(folder.parent, ignore_errors=True)  # the fetch's own temporary folder

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop following and close the reader."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- the work ------------------------------------------------------------------------------------------
    def apply(self, release: ModelRelease) -> InferenceEngine | None:
        """Handle one release: load its version and queue it for the service; None when skipped.

        Raises :class:`ReloadError` (result ``fetch_error``, ``integrity_error`` or
        ``load_error``) when the version cannot serve; nothing changes then.
        """
        with self._lock:
            if release.version == self._latest_version:
                RELOADS.labels(self.name, "skipped").inc()
                log.info("%s: release %r is already serving or loaded", self.name, release.version)
                return None
        engine = self.load(release.version, expected_sha256=release.sha256 or None)
        with self._lock:
            stale, self._pending = self._pending, engine
            self._latest_version = engine.version
        if stale is not None:
            self.retire(stale)
        RELOADS.labels(self.name, "ok").inc()
        log.info("%s: version %r loaded and verified; swapping in between batches", self.name, engine.version)
        return engine

    def load(self, version: str, *, expected_sha256: str | None = None) -> InferenceEngine:
        """Fetch one version into the local cache, verify it and load it (raises :class:`ReloadError`)."""
        self._cache.mkdir(parents=True, exist_ok=True)
        dest = Path(tempfile.mkdtemp(prefix=f"{version}-", dir=self._cache))
        try:
            try:
                # Serving needs no source weights; the store verifies every fetched file's sha256.
                folder = self.store.fetch(self.name, version, dest / version, weights=False)
            except IntegrityError as exc:
                raise ReloadError("integrity_error", f"version {version!r}: {exc}") from exc
            except ModelStoreError as exc:
                raise ReloadError("fetch_error", f"version {version!r}: {exc}") from exc
            engine = self._load_folder(Path(folder), version, expected_sha256)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return engine

    def _load_folder(self, folder: Path, version: str, expected_sha256: str | None) -> InferenceEngine:
        if expected_sha256:
            # The store checked the file against its manifest; this checks it is the file announced.
            try:
                onnx = folder / Manifest.read(folder).onnx_file
                actual = file_sha256(onnx)
            except (ModelStoreError, OSError) as exc:
                raise ReloadError("load_error", f"version {version!r}: {exc}") from exc
            if actual != expected_sha256:
                raise ReloadError(
                    "integrity_error", f"version {version!r}: {onnx.name} sha256 {actual} != released {expected_sha256}"
                )
        try:
            engine = serving_engine(self.config, self.name, folder)
        except EngineError as exc:
            raise ReloadError("load_error", f"version {version!r}: {exc}") from exc
        except Exception as exc:  # LabelMapError and the like: the version cannot serve this task
            raise ReloadError("load_error", f"version {version!r}: {type(exc).__name__}: {exc}") from exc
        if engine.version != version:
            log.warning("%s: manifest of %r names version %r; using the store's", self.name, version, engine.version)
            engine.version = version
        try:
            probs = engine.predict([SMOKE_TEXT])
        except Exception as exc:
            raise ReloadError("load_error", f"version {version!r}: smoke prediction failed: {exc}") from exc
        if probs.shape != (1, len(self.config.task.labels)) or not np.isfinite(probs).all():
            raise ReloadError("load_error", f"version {version!r}: smoke prediction gave {probs!r}")
        return engine

    def _follow(self) -> None:
        assert self._reader is not None
        while not self._stop.is_set():
            try:
                messages = self._reader.poll(self._poll_s)
            except Exception:
                log.exception("%s: reading %s failed; retrying", self.name, RELEASES_TOPIC)
                self._stop.wait(1.0)
                continue
            for msg in messages:
                if self._stop.is_set():
                    return
                self._handle(msg)

    def _handle(self, msg: RawMessage) -> None:
        try:
            release, _ = decode(RELEASES_TOPIC, msg)
        except BadInput as exc:
            RELOADS.labels(self.name, "bad_release").inc()
            log.error("%s: undecodable message on %s (key %r): %s", self.name, RELEASES_TOPIC, msg.key, exc.detail)
            return
        if release.specialist != self.name:
            return
        try:
            self.apply(release)
        except ReloadError as exc:
            RELOADS.labels(self.name, exc.result).inc()
            log.error("%s: release %r rejected, old version keeps serving: %s", self.name, release.version, exc)
