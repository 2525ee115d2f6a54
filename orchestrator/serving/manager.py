"""Loaded model versions, routing, and the repository poller with graceful version swaps.

A swap never leaves a model without a version: new versions are loaded and warmed first, then routing is
switched in one step, then versions that left the policy stop taking requests and are unloaded once their
in-flight requests (a reference count) have finished. Removing a version directory is the same operation
in reverse, so the previous version is loaded again before the removed one goes away.

A version in a bucket (``gs://``, ``s3://``) is downloaded to a local cache directory of this server first
(TensorFlow's own filesystem may not reach the bucket or its emulator, and a load should not read over the
network); the copy is removed when the version is unloaded.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from orchestrator.artifacts import publish, storage
from orchestrator.serving.batching import Batcher
from orchestrator.serving.repository import ModelEntry, version_dirs
from orchestrator.serving.status import not_found

log = logging.getLogger("tfscale.serving")

SERVING_DEFAULT = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


@dataclass
class Signature:
    """One signature of a loaded version: its function and its input/output specs by key."""

    name: str
    fn: Any
    inputs: Dict[str, Any]  # key -> tf.TensorSpec
    outputs: Dict[str, Any]
    batcher: Optional[Batcher] = None
    method_name: str = PREDICT_METHOD  # tensorflow/serving/classify or .../regress: takes serialized tf.Examples

    fast: Optional[Callable[[Any], Dict[str, Any]]] = None  # single-input flat call, see enable_fast_call

    def call(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run the signature once on numpy inputs."""
        tf = _tf()
        if self.fast is not None:
            (value,) = inputs.values()
            result = self.fast(tf.constant(value))
        else:
            result = self.fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    def enable_fast_call(self) -> bool:
        """Skip the keyword-argument checks of signature calls (a large share of a small model's call time).

        Only for single-input signatures, and only if the flat call answers exactly like the normal call
        on a warm-up example; otherwise the normal call stays in use.
        """
        tf = _tf()
        call_flat = getattr(self.fn, "_call_flat", None)
        if call_flat is None or len(self.inputs) != 1:
            return False
        try:
            captured = self.fn.captured_inputs
            structure = self.fn.structured_outputs

            def fast(x):
                out = call_flat([x], captured)
                return out if isinstance(out, dict) else tf.nest.pack_sequence_as(structure, out)

            example = warmup_inputs(self.inputs)
            (value,) = example.values()
            expected = self.fn(**{k: tf.constant(v) for k, v in example.items()})
            got = fast(tf.constant(value))
            if set(got) != set(expected) or not all(np.array_equal(got[k].numpy(), expected[k].numpy()) for k in expected):
                return False
        except Exception:  # any surprise in TensorFlow's internals: keep the public call path
            return False
        self.fast = fast
        return True

    def run(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run through the batcher when batching is on, else directly."""
        if self.batcher is not None:
            rows = next(iter(inputs.values())).shape[0] if inputs else 0
            return self.batcher.submit(inputs, rows)
        return self.call(inputs)


def _tf():
    from orchestrator.runtime.tf_env import import_tensorflow

    return import_tensorflow()


def warmup_inputs(inputs: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """One all-zero example per input (unknown dimensions become 1)."""
    out = {}
    for key, spec in inputs.items():
        shape = [1 if d is None else d for d in spec.shape.as_list()] if spec.shape.rank is not None else [1]
        dtype = spec.dtype.as_numpy_dtype
        out[key] = np.zeros(shape, dtype=object if spec.dtype.name == "string" else dtype)
        if spec.dtype.name == "string":
            out[key][...] = b""
    return out


class LoadedVersion:
    """A SavedModel version in memory, with a count of the requests currently using it."""

    def __init__(self, model: str, version: int, path: Path, batching: Any = None):
        tf = _tf()
        self.model = model
        self.version = version
        self.path = Path(path)
        self._obj = tf.saved_model.load(str(path))
        self.signatures: Dict[str, Signature] = {}
        self._signature_defs = None
        methods = self.method_names()
        for name, fn in self._obj.signatures.items():
            _, kwargs = fn.structured_input_signature
            outputs = {k: v for k, v in fn.structured_outputs.items()}
            sig = Signature(name, fn, dict(kwargs), outputs, method_name=methods.get(name) or PREDICT_METHOD)
            if sig.method_name == PREDICT_METHOD:  # the others take tf.Examples, which an all-zero warm-up is not
                sig.enable_fast_call()
            if batching is not None and batching.enabled:
                sig.batcher = Batcher(sig.call, max_batch_size=batching.max_batch_size,
                                      batch_timeout_micros=batching.batch_timeout_micros,
                                      num_batch_threads=batching.num_batch_threads,
                                      max_enqueued_batches=batching.max_enqueued_batches,
                                      name=f"{model}/{version}/{name}")
            self.signatures[name] = sig
        self._refs = 0
        self._cv = threading.Condition()

    def signature(self, name: str) -> Signature:
        """The signature ``name`` ('' means serving_default); NOT_FOUND listing the choices otherwise."""
        key = name or SERVING_DEFAULT
        try:
            return self.signatures[key]
        except KeyError:
            raise not_found(f"Serving signature name: \"{key}\" not found in signature def of model "
                            f"{self.model} version {self.version}; it has: {', '.join(sorted(self.signatures))}") from None

    def warm(self) -> None:
        """Call every predict signature once so the first real request pays no first-call costs.

        Classification and regression signatures parse tf.Examples whose features only the client knows.
        """
        for sig in self.signatures.values():
            if sig.method_name == PREDICT_METHOD:
                sig.call(warmup_inputs(sig.inputs))

    def method_names(self) -> Dict[str, str]:
        """Each signature's TF Serving method name (``tensorflow/serving/predict``, ``.../classify``, ``.../regress``)."""
        return {k: v.method_name for k, v in self.signature_defs().items()}

    def signature_defs(self) -> Any:
        """The SavedModel's ``SignatureDef`` map (for metadata), read from saved_model.pb."""
        if self._signature_defs is None:
            from tensorflow.core.protobuf import saved_model_pb2

            sm = saved_model_pb2.SavedModel.FromString((self.path / "saved_model.pb").read_bytes())
            self._signature_defs = {k: v for k, v in sm.meta_graphs[0].signature_def.items()
                                    if not k.startswith("__")}
        return self._signature_defs

    def acquire(self) -> None:
        with self._cv:
            self._refs += 1

    def release(self) -> None:
        with self._cv:
            self._refs -= 1
            if self._refs == 0:
                self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request uses this version; False if ``timeout`` passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: self._refs == 0, timeout)

    def unload(self) -> None:
        """Stop the batchers and drop the model from memory."""
        for sig in self.signatures.values():
            if sig.batcher is not None:
                sig.batcher.close()
        self.signatures = {}
        self._obj = None


class Lease:
    """A routed version held for one request: ``with manager.resolve(...) as v:``."""

    def __init__(self, version: LoadedVersion):
        self.version = version

    def __enter__(self) -> LoadedVersion:
        return self.version

    def __exit__(self, *exc) -> None:
        self.version.release()


@dataclass
class VersionState:
    """What ``GET /v1/models/<name>`` reports for one version."""

    state: str  # START | LOADING | AVAILABLE | UNLOADING | END (TF Serving's ModelVersionStatus.State)
    error: str = ""
    error_code: str = "OK"


@dataclass
class _Model:
    entry: ModelEntry  # what requests are routed by (labels switch only once their versions are loaded)
    target: Optional[ModelEntry] = None  # the latest config of the model; None = same as entry
    routed: Dict[int, LoadedVersion] = field(default_factory=dict)
    states: Dict[int, VersionState] = field(default_factory=dict)
    failed: Dict[int, str] = field(default_factory=dict)  # version -> content signature of the attempt that failed
    seen: Dict[int, str] = field(default_factory=dict)  # version -> signature at the previous poll (a copy settling)
    missing_since: Optional[float] = None  # monotonic time the model directory was first seen without versions


class ModelManager:
    """Every served model: routing of requests to versions and the loading/unloading of versions.

    ``entries`` gives the models; ``entries_source`` (optional) is called on every poll to re-read them
    (a models.config that may change while serving).
    """

    def __init__(self, entries: List[ModelEntry], *, batching: Any = None, warmup: bool = True,
                 entries_source: Optional[Callable[[], Optional[List[ModelEntry]]]] = None,
                 unload_timeout_s: float = 60.0, unload_grace_s: float = 30.0):
        self._models: Dict[str, _Model] = {e.name: _Model(e) for e in entries}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._batching = batching
        self._warmup = warmup
        self._source = entries_source
        self._unload_timeout = unload_timeout_s
        self._grace = unload_grace_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._unloaders: List[threading.Thread] = []
        self._cache_dir: Optional[Path] = None  # local copies of versions loaded from a bucket
        # Told of every load attempt: (version path, loaded?, seconds loading, seconds warming up or None).
        self.on_load: Optional[Callable[[str, bool, float, Optional[float]], None]] = None

    # --------------------------------------------------------------------------------- routing
    def model_names(self) -> List[str]:
        with self._lock:
            return sorted(self._models)

    def _model(self, name: str) -> _Model:
        m = self._models.get(name)
        if m is None:
            raise not_found(f"Servable not found for request: Latest({name}); known models: "
                            f"{', '.join(sorted(self._models)) or 'none'}")
        return m

    def resolve(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> Lease:
        """Hold the version a request is routed to: ``version``, the one ``label`` points at, or the latest."""
        with self._lock:
            m = self._model(name)
            if label:
                if label not in m.entry.labels:
                    raise not_found(f"Unrecognized servable version label: {label} for model {name}; "
                                    f"labels: {', '.join(sorted(m.entry.labels)) or 'none'}")
                version = m.entry.labels[label]
            if version is None:
                if not m.routed:
                    raise not_found(f"Servable not found for request: Latest({name}); no version is loaded")
                chosen = m.routed[max(m.routed)]
            else:
                chosen = m.routed.get(int(version))
                if chosen is None:
                    raise not_found(f"Servable not found for request: Specific({name}, {version}); loaded versions: "
                                    f"{', '.join(map(str, sorted(m.routed))) or 'none'}")
            chosen.acquire()
            return Lease(chosen)

    def status(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> List[Tuple[int, VersionState]]:
        """``[(version, state)]`` for one model (newest first), one version, or the version of a label."""
        with self._lock:
            m = self._model(name)
            if label:
                if label not in m.entry.labels:
                    raise not_found(f"Unrecognized servable version label: {label} for model {name}")
                version = m.entry.labels[label]
            if version is not None:
                st = m.states.get(int(version))
                if st is None:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [(int(version), st)]
            return sorted(m.states.items(), reverse=True)

    def loaded_versions(self, name: str) -> List[int]:
        """Versions currently taking requests."""
        with self._lock:
            return sorted(self._model(name).routed)

    def labels(self, name: str) -> Dict[str, int]:
        with self._lock:
            return dict(self._model(name).entry.labels)

    # ---------------------------------------------------------------------------------- loading
    def set_entries(self, entries: List[ModelEntry]) -> None:
        """Replace the set of models (a new models.config) and apply it at once."""
        with self._poll_lock:
            self._apply_entries(entries)
            self._sync_all()

    def poll_once(self) -> None:
        """Re-read the model config (if it has a source) and sync every model with the directories on disk."""
        with self._poll_lock:
            if self._source is not None:
                entries = self._source()
                if entries is not None:
                    with self._lock:
                        current = {n: m.target or m.entry for n, m in self._models.items()}
                    if current != {e.name: e for e in entries}:
                        log.info("model config changed; applying %d model(s)", len(entries))
                        self._apply_entries(entries)
            self._sync_all()

    def _apply_entries(self, entries: List[ModelEntry]) -> None:
        with self._lock:
            new = {e.name: e for e in entries}
            for name, entry in new.items():
                if name in self._models:
                    self._models[name].target = entry
                else:
                    self._models[name] = _Model(entry)
            removed = [self._models.pop(n) for n in list(self._models) if n not in new]
        for m in removed:
            for v, lv in sorted(m.routed.items()):
                log.info("model %s: removed from the config; unloading version %d", m.entry.name, v)
                self._retire(m, lv)

    def _sync_all(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for m in models:
            self._sync_model(m)

    def _desired(self, entry: ModelEntry, on_disk: Dict[int, Path]) -> List[int]:
        wanted = set(entry.policy.select(list(on_disk)))
        # A label keeps its version loaded, which is how a label pins a version the policy would drop.
        wanted |= {v for v in entry.labels.values() if v in on_disk}
        return sorted(wanted)

    def _sync_model(self, m: _Model) -> None:
        target = m.target or m.entry
        name = target.name
        on_disk = version_dirs(target.base_path)
        if self._in_grace(m, target, on_disk):
            return
        desired = self._desired(target, on_disk)
        for v in desired:
            if v in m.routed:
                continue
            path = on_disk[v]
            signature = content_signature(path)
            if v in m.failed:
                previous, m.seen[v] = m.seen.get(v), signature
                if signature == m.failed[v] or signature != previous:
                    continue  # unchanged since the failed attempt, or still being copied: wait until it settles
                log.info("model %s: version %d changed since it failed to load; trying again", name, v)
            self._load(m, v, path, signature)
        if m.target is not None:
            with self._lock:
                # Labels move only now that the versions they point at are loaded (or failed to load).
                if m.entry.labels != target.labels:
                    log.info("model %s: labels %s -> %s", name, m.entry.labels, target.labels)
                m.entry, m.target = target, None
        stale = [v for v in list(m.routed) if v not in desired]
        if stale and not any(v in m.routed for v in desired) and desired:
            # Nothing wanted could be loaded: keep serving what is there rather than nothing.
            log.warning("model %s: no wanted version %s loaded; keeping %s", name, desired, sorted(m.routed))
            return
        for v in stale:
            with self._lock:
                lv = m.routed.get(v)
                if lv is None:
                    continue
                m.routed = {k: x for k, x in m.routed.items() if k != v}
                m.states[v] = VersionState("UNLOADING")
            reason = "directory removed" if v not in on_disk else "outside the version policy"
            log.info("model %s: version %d no longer routed (%s); new requests go to %s",
                     name, v, reason, max(m.routed) if m.routed else "none")
            self._retire(m, lv)
        for v in list(m.states):
            # Forget versions whose directory is gone and which are no longer in memory.
            if v not in on_disk and v not in m.routed and m.states[v].state == "END" and v not in desired:
                with self._lock:
                    m.states.pop(v, None)

    def _download(self, name: str, v: int, uri: str) -> Path:
        """A local copy of the bucket version ``uri`` in this server's cache (complete before it gets its name)."""
        if self._cache_dir is None:
            self._cache_dir = Path(tempfile.mkdtemp(prefix="tfscale-serving-cache-"))
        target = self._cache_dir / name / f"{v:04d}"
        if target.is_dir():
            return target
        return Path(publish.publish_directory(target.parent, lambda tmp: storage.download_dir(uri, tmp), name=target.name))

    def _in_grace(self, m: _Model, target: ModelEntry, on_disk: Dict[int, Any]) -> bool:
        """True while a model whose directory has no version left keeps serving what it has loaded.

        A directory replaced by ``rm -rf && cp``, a repository moved and moved back, or a network mount that
        drops for a moment look the same as a deleted model for a few seconds; unloading at once would turn
        them into an outage. Only after ``unload_grace_s`` are the versions unloaded.
        """
        if on_disk or not m.routed:
            if m.missing_since is not None and on_disk:
                log.info("model %s: version directories are back after %.1fs; nothing was unloaded", target.name,
                         time.monotonic() - m.missing_since)
            m.missing_since = None
            return False
        now = time.monotonic()
        if m.missing_since is None:
            m.missing_since = now
            if self._grace > 0:
                log.warning("model %s: no version directory under %s (moved, being replaced, storage unreachable?); "
                            "versions %s keep serving for up to %.0fs (serving.unload_grace_s)", target.name,
                            target.base_path, sorted(m.routed), self._grace)
        if now - m.missing_since < self._grace:
            return True
        if self._grace > 0:
            log.warning("model %s: still no version directory under %s after %.0fs; unloading versions %s", target.name,
                        target.base_path, now - m.missing_since, sorted(m.routed))
        return False

    def _load(self, m: _Model, v: int, path: Path, signature: str) -> None:
        name = m.entry.name
        with self._lock:
            m.states[v] = VersionState("LOADING")
        log.info("model %s: loading version %d from %s", name, v, path)
        t0 = time.monotonic()
        if storage.is_remote(path):
            try:
                path = self._download(name, v, str(path))
            except Exception as e:  # the bucket may be unreachable for a moment: try again on the next poll
                with self._lock:
                    m.states.pop(v, None)
                log.error("model %s: version %d could not be downloaded from %s: %s", name, v, path, e)
                return
        t_load, t_warm = time.monotonic(), None
        try:
            lv = LoadedVersion(name, v, path, self._batching)
            if self._warmup:
                t_warm = time.monotonic()
                lv.warm()
        except Exception as e:  # a broken version must not take the server or the other versions down
            self._report_load(path, False, t_load, t_warm)
            m.failed[v] = m.seen[v] = signature
            self._drop_copy_path(path)  # a cached download of an incomplete upload must not be reused
            with self._lock:
                m.states[v] = VersionState("END", f"Loading {path} failed: {type(e).__name__}: {e}", "UNKNOWN")
            log.error("model %s: version %d failed to load: %s", name, v, e)
            return
        self._report_load(path, True, t_load, t_warm)
        m.failed.pop(v, None)
        m.seen.pop(v, None)
        with self._lock:
            routed = dict(m.routed)
            routed[v] = lv
            m.routed = routed
            m.states[v] = VersionState("AVAILABLE")
        log.info("model %s: version %d loaded and warmed in %.2fs; now AVAILABLE (latest routed: %d)",
                 name, v, time.monotonic() - t0, max(routed))

    def _report_load(self, path: Path, ok: bool, t_load: float, t_warm: Optional[float]) -> None:
        if self.on_load is None:
            return
        now = time.monotonic()
        load_s = (t_warm if t_warm is not None else now) - t_load
        try:
            self.on_load(str(path), ok, load_s, None if t_warm is None else now - t_warm)
        except Exception:  # metrics must never decide whether a version serves
            log.exception("load listener failed")

    def _retire(self, m: _Model, lv: LoadedVersion) -> None:
        def finish():
            if not lv.wait_idle(self._unload_timeout):
                log.warning("model %s: version %d still busy after %.0fs; unloading anyway", lv.model, lv.version, self._unload_timeout)
            else:
                log.info("model %s: version %d has no requests in flight; unloading", lv.model, lv.version)
            lv.unload()
            self._drop_copy(lv)
            with self._lock:
                if m.states.get(lv.version) and m.states[lv.version].state == "UNLOADING":
                    m.states[lv.version] = VersionState("END")
            log.info("model %s: version %d unloaded", lv.model, lv.version)

        t = threading.Thread(target=finish, name=f"unload-{lv.model}-{lv.version}", daemon=True)
        self._unloaders = [x for x in self._unloaders if x.is_alive()] + [t]
        t.start()

    # ---------------------------------------------------------------------------------- polling
    def start_polling(self, interval_s: float) -> None:
        """Poll the repository every ``interval_s`` seconds in a background thread (0: never)."""
        if interval_s <= 0:
            return

        def loop():
            while not self._stop.wait(interval_s):
                try:
                    self.poll_once()
                except Exception:  # keep polling: the next poll may see a repaired repository
                    log.exception("repository poll failed")

        self._thread = threading.Thread(target=loop, name="repository-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and unload every version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            models = list(self._models.values())
        for m in models:
            for lv in m.routed.values():
                lv.wait_idle(5.0)
                lv.unload()
            m.routed = {}
        for t in self._unloaders:
            t.join(timeout=5)
        if self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)

    def _drop_copy(self, lv: LoadedVersion) -> None:
        """Remove the cached local copy of a bucket version once it is unloaded."""
        self._drop_copy_path(lv.path)

    def _drop_copy_path(self, path: Path) -> None:
        if self._cache_dir is not None and not storage.is_remote(path) and self._cache_dir in Path(path).parents:
            shutil.rmtree(path, ignore_errors=True)


def content_signature(path: Path | str) -> str:
    """A digest of every file's relative name, size and modification time under a version directory.

    A version that failed to load is tried again once this changes. The directory's own mtime is no such
    signal: a copy that rewrites or appends to files already there (rsync, ``gsutil cp``) leaves it alone.
    """
    digest = hashlib.sha256()
    if storage.is_remote(path):
        try:
            listing = storage.files(path)
        except Exception:  # unreachable for now: counts as unchanged until the next poll that sees the listing
            return ""
        for rel, mtime in sorted(listing.items()):
            digest.update(f"{rel}\0{mtime}\n".encode())
        return digest.hexdigest()
    root = str(path)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames):
            full = os.path.join(dirpath, n)
            try:
                st = os.stat(full)
            except OSError:
                continue  # removed while we looked
            digest.update(f"{os.path.relpath(full, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()
