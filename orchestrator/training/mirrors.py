"""A task's working directories mirrored to storage URIs: the backup, TensorBoard logs and the model copy.

A task whose machine is not the one that keeps the run (a Ray node, a Vertex replica) keeps these
directories local and copies them through tfscale's storage layer (:mod:`orchestrator.artifacts.storage`)
after every epoch and at the end of training. TensorFlow could write ``gs://`` itself, but its GCS file
system takes no endpoint (no emulator, no private endpoint) and it no longer ships ``s3://``; one storage
layer serves every URI tfscale accepts.

Where they go (:meth:`Mirrors.resolve`), inside a Vertex job from the variables Vertex sets for the job's
``baseOutputDirectory``, else below the run's URI:

- ``backup`` (``trainer.backup_and_restore``): ``AIP_CHECKPOINT_DIR``, else ``<run URI>/backup``. Every task
  restores from it before training; the chief uploads its backup after each epoch, the ``checkpoint`` index
  last, so a restarted job never finds an index naming files that are not there yet. When training ends,
  a backup below the run's URI is removed (as BackupAndRestore removes its own); the one in
  ``AIP_CHECKPOINT_DIR`` stays, as the job's last checkpoint where Vertex users look for it;
- ``tensorboard``: ``AIP_TENSORBOARD_LOG_DIR``, else ``<run URI>/tensorboard`` (the chief's logs, per epoch);
- ``model``: ``AIP_MODEL_DIR`` (the chief copies the published SavedModel version there, ``saved_model.pb``
  last, as Vertex expects a model there);
- ``record``: the run's URI itself: the chief appends each epoch's line to its ``epochs.jsonl`` there too
  (through the run record), so a job restarted after its chief died keeps the epochs the dead one trained.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from orchestrator.artifacts import storage

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "AIP_MODEL_DIR"
CHECKPOINT_DIR_ENV = "AIP_CHECKPOINT_DIR"
TENSORBOARD_DIR_ENV = "AIP_TENSORBOARD_LOG_DIR"
#: Written last and removed-from first: what a reader (TensorFlow's CheckpointManager, a model server) opens first.
INDEX_FILES = ("checkpoint", "saved_model.pb")


@dataclass(frozen=True)
class Mirrors:
    """The URIs a task copies its backup, TensorBoard logs and model to (None: kept local only)."""

    backup: Optional[str] = None
    tensorboard: Optional[str] = None
    model: Optional[str] = None
    keep_backup: bool = False  # leave the last backup in place after training (AIP_CHECKPOINT_DIR)
    record: Optional[str] = None  # the run's URI: the chief's epochs.jsonl lines also go there

    @classmethod
    def resolve(cls, run_uri: Optional[str] = None, env: Mapping[str, str] = os.environ) -> "Mirrors":
        """Vertex's ``AIP_*`` directories when set, else ``<run_uri>/backup`` and ``<run_uri>/tensorboard``."""
        def var(name: str) -> Optional[str]:
            value = (env.get(name) or "").strip()
            return value.rstrip("/") or None

        below = (lambda name: storage.join(run_uri, name)) if run_uri else (lambda name: None)
        return cls(backup=var(CHECKPOINT_DIR_ENV) or below("backup"),
                   tensorboard=var(TENSORBOARD_DIR_ENV) or below("tensorboard"),
                   model=var(MODEL_DIR_ENV), keep_backup=var(CHECKPOINT_DIR_ENV) is not None, record=run_uri or None)


def restore(uri: str, local: Path) -> int:
    """Copy what ``uri`` holds into ``local`` (before training resumes from it); the number of files."""
    found = storage.files(uri)
    if found:
        storage.download_dir(uri, local)
        log.info("restored %d backup file(s) from %s", len(found), uri)
    return len(found)


class DirectoryMirror:
    """Keeps ``uri`` a copy of the local directory ``local``: changed files uploaded, removed ones removed.

    ``skip(rel)`` leaves files out (other workers' temporary backups). Index files (:data:`INDEX_FILES`) are
    uploaded after the others and stale files removed after those: the copy is consistent at each step.
    """

    def __init__(self, local: Path, uri: str, *, skip: Any = lambda rel: False):
        self.local, self.uri, self.skip = Path(local), uri, skip
        self._sent: Dict[str, Tuple[int, int]] = {}

    def _present(self) -> Dict[str, Tuple[int, int]]:
        out = {}
        if not self.local.is_dir():
            return out
        for path in self.local.rglob("*"):
            if path.is_file() and not path.is_symlink():
                rel = path.relative_to(self.local).as_posix()
                if not self.skip(rel):
                    st = path.stat()
                    out[rel] = (st.st_size, st.st_mtime_ns)
        return out

    def sync(self) -> None:
        """Upload what changed since the last sync, then remove what disappeared locally."""
        present = self._present()
        changed = [rel for rel, stamp in present.items() if self._sent.get(rel) != stamp]
        changed.sort(key=lambda rel: (Path(rel).name in INDEX_FILES, rel))
        for rel in changed:
            try:
                data = (self.local / rel).read_bytes()
            except FileNotFoundError:  # rotated away while we looked: the next sync removes it remotely
                continue
            storage.put_bytes(storage.join(self.uri, rel), data)
            self._sent[rel] = present[rel]
        for rel in sorted(set(self._sent) - set(present)):
            storage.remove(storage.join(self.uri, rel))
            del self._sent[rel]


def mirror_callback(keras: Any, mirror: DirectoryMirror, *, at_end: str = "sync") -> Any:
    """A Keras callback syncing ``mirror`` after each epoch and, by ``at_end``, when training ends.

    ``at_end``: ``"sync"`` once more; ``"remove"`` the copy (BackupAndRestore deletes its backup when fit
    ends normally, and a later attempt must not resume from it); ``"keep"`` the copy of the last epoch as it
    is. Put it after the callback that writes the directory.
    """
    if at_end not in ("sync", "remove", "keep"):
        raise ValueError(f"at_end must be 'sync', 'remove' or 'keep', not {at_end!r}")

    class _Mirror(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            mirror.sync()

        def on_train_end(self, logs=None):
            if at_end == "remove":
                storage.remove(mirror.uri)
            elif at_end == "sync":
                mirror.sync()

    return _Mirror()


def copy_model(version: Any, uri: str) -> str:
    """Copy a published SavedModel version (a local path or a URI) into ``uri`` with ``saved_model.pb`` last."""
    import tempfile

    if storage.is_remote(version):
        with tempfile.TemporaryDirectory(prefix="tfscale-model-") as tmp:
            storage.download_dir(version, tmp)
            storage.upload_dir(tmp, uri, last=INDEX_FILES)
    else:
        storage.upload_dir(storage.local_path(version), uri, last=INDEX_FILES)
    return uri
