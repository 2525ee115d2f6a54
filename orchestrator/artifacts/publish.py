"""The one publisher: every file and directory tfscale publishes appears complete or not at all.

A model server polling a repository, a web server, a study reading a run directory: each must see either
nothing or the whole artifact, and must be able to read it even when it runs as another user. So every
artifact — SavedModel versions, ``.tflite`` files, TF.js models, ``models.config`` and the other serving
files, run-record files, Vertex request files — goes through this module, and this module alone renames
things into place:

1. It is written into a hidden temporary sibling named ``.tmp-*`` in the directory it is published to
   (the same filesystem, so the rename is atomic). Readers skip hidden names.
2. Every file and directory of it is fsynced, so a crash after the rename cannot leave a version whose
   files are empty.
3. Modes are set to 0755 for directories (and owner-executable files) and 0644 for files, whatever the
   umask and ``mkdtemp``'s private 0700 say: a server running as another user must be able to read it.
   Parent directories the publisher creates get 0755 too; existing ones are the user's and left alone.
4. It is renamed into place and the parent directory is fsynced. A numbered publish (``NNNN`` plus an
   optional suffix) takes the next free number; the rename never replaces an existing name, so a
   concurrent publisher that took the number first makes this one retry with the next.
5. On any failure the temporary is removed. A temporary left by a process that died (SIGKILL, power loss)
   is removed by the next publish into the same directory once it is older than :data:`STALE_AFTER_S`;
   a younger one may belong to a publisher still writing, and is kept.

Every target may also be an object-store URI (``gs://``, ``s3://``; see :mod:`orchestrator.artifacts.storage`).
An object store has no rename, so the same promise is kept another way:

- A single file (a ``.tflite``, a run-record file, ``models.config``) is one object, and an object appears
  whole or not at all.
- A directory (a SavedModel version, a TF.js model, a converted dataset) is written to a local temporary
  directory, then uploaded under its final name with its *entry file* last: ``saved_model.pb`` (or a TF.js
  ``model.json``, a dataset's ``spec.json``). What a
  server considers a version is a numeric directory (the embedded server's poller and TF Serving's
  ``FileSystemStoragePathSource`` alike: any child whose name parses as an integer); TF Serving then loads
  it with ``LoadSavedModel``, which needs ``saved_model.pb`` and retries a failed load
  (``--max_num_load_retries``, ``--load_retry_interval_micros``). So every reader of a repository here
  (:func:`existing_versions`, :func:`visible_versions`, the embedded server) treats a numeric directory
  without its entry file as not there yet, and a TF Serving that lists it early fails one load attempt and
  retries, by when the upload is complete: the rest is always uploaded before the entry file.
- Numbers are handed out by create-only *claim* objects, ``<parent>/.versions/NNNN.claim`` (GCS
  ``ifGenerationMatch=0``, S3 ``If-None-Match``): of two publishers racing for a number exactly one creates
  the claim, the other takes the next number. A claimed number is never reused, even if its upload died.
- A publisher killed mid-upload leaves a numeric directory without an entry file: invisible to readers, and
  removed by the next publish into the same parent once its newest object is older than
  :data:`STALE_AFTER_S` (the rule for local ``.tmp-*`` temporaries); a younger one may still be uploading.
"""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from orchestrator.artifacts import storage

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
STALE_AFTER_S = 3600.0
DIR_MODE = 0o755
FILE_MODE = 0o644
VERSION_RE = re.compile(r"^\d+$")
_MAX_TRIES = 1000
#: Files a reader opens first, uploaded last on an object store: once one is there, the rest is too
#: (a SavedModel, a TF.js model, a converted dataset's spec.json).
ENTRY_FILES = ("saved_model.pb", "model.json", "spec.json")
CLAIMS_DIR = ".versions"
CLAIM_SUFFIX = ".claim"
Target = Union[str, Path]  # a local path or a storage URI


# ------------------------------------------------------------------------------------------ numbering
def existing_versions(model_dir: Target) -> List[int]:
    """Version numbers published under ``model_dir`` (directories named only by digits).

    On an object store a numeric directory counts once its ``saved_model.pb`` is there (see the module doc).
    """
    if storage.is_remote(model_dir):
        return sorted(visible_versions(model_dir))
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name))


def _next_number(directory: Path) -> int:
    """One more than the largest number any visible name in ``directory`` starts with.

    ``0003``, ``0003-canary`` and ``0003.int8.tflite`` all hold number 3: a number whose conversions or
    suffixed variants are still lying around is not handed out again.
    """
    highest = 0
    for p in directory.iterdir():
        m = re.match(r"^(\d+)", p.name)
        if m:
            highest = max(highest, int(m.group(1)))
    return highest + 1


# ------------------------------------------------------------------------------------------ primitives
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int
except (AttributeError, OSError):  # not glibc ≥ 2.28: fall back to a check, then link or rename
    _renameat2 = None


def _rename_new(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; FileExistsError if ``dst`` exists (never replaces it, even an empty directory)."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: this filesystem has no RENAME_NOREPLACE
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    if Path(src).is_dir():
        os.rename(src, dst)  # a directory rename fails on a non-empty target
    else:
        os.link(src, dst)  # fails if dst appeared meanwhile; rename would silently replace it
        os.unlink(src)


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _readable_mode(st_mode: int) -> int:
    if stat.S_ISDIR(st_mode) or st_mode & stat.S_IXUSR:
        return DIR_MODE
    return FILE_MODE


def _seal(path: Path) -> None:
    """fsync every file and directory under ``path`` (itself included) and make each readable by all."""
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                f = Path(root) / name
                if f.is_symlink():
                    continue
                os.chmod(f, _readable_mode(f.stat().st_mode))
                _fsync_path(f)
            for name in dirs:
                d = Path(root) / name
                if not d.is_symlink():
                    os.chmod(d, DIR_MODE)
                    _fsync_path(d, directory=True)
        os.chmod(path, DIR_MODE)
        _fsync_path(path, directory=True)
    else:
        os.chmod(path, _readable_mode(path.stat().st_mode))
        _fsync_path(path)


def _make_parents(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each 0755 whatever the umask (existing ones are left alone)."""
    missing = []
    d = Path(directory)
    while not d.is_dir():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:  # a concurrent publisher made it
            continue
        os.chmod(d, DIR_MODE)


def _fsync_dir(directory: Path) -> None:
    try:
        _fsync_path(directory, directory=True)
    except OSError:  # some filesystems refuse fsync on directories; the rename itself is still atomic
        pass


def discard(tmp: Union[str, Path]) -> None:
    """Remove a temporary (directory or file) that will not be published."""
    tmp = Path(tmp)
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def remove_stale_temporaries(directory: Path, older_than_s: float = STALE_AFTER_S) -> List[Path]:
    """Remove ``.tmp-*`` entries of ``directory`` last modified more than ``older_than_s`` ago; return them."""
    removed: List[Path] = []
    now = time.time()
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        if not p.name.startswith(TMP_PREFIX):
            continue
        try:
            if now - p.lstat().st_mtime <= older_than_s:
                continue
        except FileNotFoundError:
            continue
        discard(p)
        removed.append(p)
        log.info("removed stale temporary %s", p)
    return removed


# ------------------------------------------------------------------------------------------ directories
def staging_directory(parent: Target, hint: str = "version") -> Path:
    """A new hidden temporary directory ``parent/.tmp-<hint>-*`` to write an artifact into.

    Publish it with :func:`publish_staged`, or :func:`discard` it. Stale temporaries of ``parent`` are
    removed first. For an object-store ``parent`` it is a local temporary directory (uploaded on publish).
    """
    if storage.is_remote(parent):
        return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{hint}-"))
    parent = Path(parent)
    _make_parents(parent)
    remove_stale_temporaries(parent)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{hint}-", dir=parent))


def publish_staged(tmp: Path, parent: Target, *, name: Optional[str] = None, suffix: str = "") -> Target:
    """Seal the staged directory ``tmp`` and rename it to ``parent/name``, or to the next free ``NNNN<suffix>``.

    With ``name``, FileExistsError if it is taken. ``tmp`` is removed on any failure. An object-store
    ``parent`` gets the upload described in the module doc, and the published URI (a ``str``) is returned.
    """
    if storage.is_remote(parent):
        try:
            target = _upload_version(Path(tmp), str(parent), name=name, suffix=suffix)
        finally:
            discard(tmp)
        log.info("published %s", target)
        return target
    tmp, parent = Path(tmp), Path(parent)
    try:
        _seal(tmp)
        target = _place(tmp, parent, name=name, suffix=suffix)
    except BaseException:
        discard(tmp)
        raise
    log.info("published %s", target)
    return target


def publish_directory(parent: Target, write: Callable[[Path], None], *, name: Optional[str] = None,
                      suffix: str = "") -> Target:
    """Publish a directory written by ``write(tmp_dir)`` as ``parent/name`` or the next free ``NNNN<suffix>``.

    On any failure (in ``write`` too) the temporary directory is removed: nothing half-written is left.
    ``parent`` may be an object-store URI; ``write`` always writes to a local directory.
    """
    tmp = staging_directory(parent)
    try:
        write(tmp)
    except BaseException:
        discard(tmp)
        raise
    return publish_staged(tmp, parent, name=name, suffix=suffix)


def _place(tmp: Path, parent: Path, *, name: Optional[str], suffix: str) -> Path:
    if name is not None:
        target = parent / name
        _rename_new(tmp, target)
        _fsync_dir(parent)
        return target
    for _ in range(_MAX_TRIES):
        target = parent / f"{_next_number(parent):04d}{suffix}"
        try:
            _rename_new(tmp, target)
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            continue  # a concurrent publisher took this number: try the next one
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        _fsync_dir(parent)
        return target
    raise RuntimeError(f"Could not find a free number under {parent} after {_MAX_TRIES} tries.")


# ------------------------------------------------------------------------------------------ files
def _staged_file(directory: Path, name: str, content: Union[bytes, str], *, durable: bool = True,
                 private: bool = False) -> Path:
    _make_parents(directory)
    remove_stale_temporaries(directory)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{name}-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if not private:
            os.chmod(tmp, FILE_MODE)  # mkstemp makes it private to its owner
    except BaseException:
        discard(tmp)
        raise
    return Path(tmp)


def publish_file(target: Target, content: Union[bytes, str], *, durable: bool = True, private: bool = False) -> Target:
    """Write ``content`` to ``target`` atomically, replacing what was there (temporary sibling, fsync, rename).

    An object-store ``target`` is written as one object (which appears whole or not at all). ``durable=False``
    skips the fsyncs, for files that only hand something to another process on this machine, which reads
    them once right away; ``private=True`` leaves the file readable by its owner only (it may hold secrets).
    """
    if storage.is_remote(target):
        storage.put_bytes(target, content.encode("utf-8") if isinstance(content, str) else content)
        return str(target)
    target = Path(target)
    tmp = _staged_file(target.parent, target.name, content, durable=durable, private=private)
    try:
        os.replace(tmp, target)
    except BaseException:
        discard(tmp)
        raise
    if durable:
        _fsync_dir(target.parent)
    return target


def publish_numbered_file(directory: Target, content: Union[bytes, str], *, suffix: str) -> Target:
    """Publish ``content`` as ``directory/NNNN<suffix>`` with the next free number; never replaces a file."""
    if storage.is_remote(directory):
        number = _claim_number(str(directory))
        target = storage.join(directory, f"{number:04d}{suffix}")
        storage.put_bytes(target, content.encode("utf-8") if isinstance(content, str) else content, create_only=True)
        log.info("published %s", target)
        return target
    directory = Path(directory)
    tmp = _staged_file(directory, f"numbered{suffix}", content)
    try:
        target = _place(tmp, directory, name=None, suffix=suffix)
    except BaseException:
        discard(tmp)
        raise
    log.info("published %s", target)
    return target


def write_text(path: Target, text: str) -> Target:
    """Write ``text`` (UTF-8) to ``path`` atomically: readers see the old file or the new one, never half."""
    return publish_file(path if storage.is_remote(path) else Path(path), text)


def write_json(path: Target, obj: Any) -> Target:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return publish_file(path if storage.is_remote(path) else Path(path),
                        json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ------------------------------------------------------------------------------------------ moving aside
def move_aside(path: Path, aside: Path) -> Path:
    """Rename a published ``path`` to ``aside`` (e.g. a hidden name a server ignores); never replaces ``aside``."""
    path, aside = Path(path), Path(aside)
    _rename_new(path, aside)
    _fsync_dir(aside.parent)
    if path.parent != aside.parent:
        _fsync_dir(path.parent)
    return aside


# ------------------------------------------------------------------------------------------ object stores
def visible_versions(model_dir: Target) -> Dict[int, str]:
    """``{version: location}`` of the versions a server may load from ``model_dir`` (a path or a URI).

    Local: every numeric directory (they appear by an atomic rename). Object store: every numeric directory
    whose ``saved_model.pb`` is there — one still uploading, or left by a killed upload, is not a version.
    """
    if not storage.is_remote(model_dir):
        return {v: str(Path(model_dir) / f"{v:04d}") for v in existing_versions(model_dir)}
    found: Dict[int, str] = {}
    for name in storage.listdir(model_dir):
        if VERSION_RE.match(name):
            location = storage.join(model_dir, name)
            if storage.exists(storage.join(location, ENTRY_FILES[0])):
                found[int(name)] = location
    return found


def remove_stale_uploads(parent: str, older_than_s: float = STALE_AFTER_S) -> List[str]:
    """Remove numbered directories of ``parent`` that have no entry file and no object newer than ``older_than_s``.

    Those are uploads whose publisher died; a younger one may still be uploading, and is kept. Returns the
    URIs removed.
    """
    removed = []
    now = time.time()
    for name in storage.listdir(parent):
        if not re.match(r"^\d", name):
            continue
        location = storage.join(parent, name)
        found = storage.files(location)  # {} for a single object (a .tflite): those appear whole
        if not found or any(rel in ENTRY_FILES for rel in found):
            continue
        if now - max(found.values()) <= older_than_s:
            continue
        storage.remove(location)
        removed.append(location)
        log.info("removed stale partial upload %s", location)
    return removed


def publish_tree(local_dir: Path, target: Target, *, skip: Callable[[str], bool] = lambda rel: False) -> List[Target]:
    """Publish every file of ``local_dir`` as ``target/<relative path>`` (each with :func:`publish_file`).

    For mirroring a local working directory (a run's record, a study) into a bucket; files for which
    ``skip(relative path)`` is true and hidden temporaries are left out. Returns what was written.
    """
    written = []
    for rel in sorted(storage.files(local_dir)):
        if skip(rel) or any(part.startswith(TMP_PREFIX) for part in Path(rel).parts):
            continue
        written.append(publish_file(storage.join(target, Path(rel).as_posix()), (Path(local_dir) / rel).read_bytes()))
    return written


def _claim(parent: str, name: str) -> bool:
    """Create the claim object of ``name`` under ``parent``; False if another publisher holds it."""
    record = json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "time": time.time()})
    try:
        storage.put_bytes(storage.join(parent, CLAIMS_DIR, f"{name}{CLAIM_SUFFIX}"), record.encode(), create_only=True)
    except FileExistsError:
        return False
    return True


def _claim_number(parent: str) -> int:
    """Claim the next number under ``parent``: above every claim and every numbered name already there."""
    highest = 0
    for name in storage.listdir(parent) + storage.listdir(storage.join(parent, CLAIMS_DIR)):
        m = re.match(r"^(\d+)", name)
        if m:
            highest = max(highest, int(m.group(1)))
    for number in range(highest + 1, highest + 1 + _MAX_TRIES):
        if _claim(parent, f"{number:04d}"):
            return number
    raise RuntimeError(f"Could not claim a free number under {parent} after {_MAX_TRIES} tries.")


def _upload_version(tmp: Path, parent: str, *, name: Optional[str], suffix: str) -> str:
    remove_stale_uploads(parent)
    if name is not None:
        target = storage.join(parent, name)
        if storage.exists(target) or not _claim(parent, name):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    else:
        target = storage.join(parent, f"{_claim_number(parent):04d}{suffix}")
    storage.upload_dir(tmp, target, last=ENTRY_FILES)
    return target
