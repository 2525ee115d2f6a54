"""Names that become directories, and the local directories a run writes, checked before anything is written.

``experiment.name`` (and ``model.name``, part of its default) is one directory of the run directory
``<runs_dir>/<experiment.name>/<time>``: a ``/`` or ``..`` in it would put the run elsewhere. A directory that
cannot be created — a name longer than the filesystem allows, a parent that is a file, read-only or not
writable by this user — would otherwise fail with an ``OSError`` traceback once Hydra creates it. Bucket
URIs are checked by :func:`orchestrator.artifacts.storage.preflight`.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, List, Optional, Tuple

from orchestrator.errors import ConfigError

#: One directory name: starts with a letter or digit (so never '.', '..' or hidden), holds no separator.
_NAME = re.compile(r"[^\W_][\w.-]*")


def is_plain_name(text: str, max_length: Optional[int] = None) -> bool:
    """Whether ``text`` is one plain directory name (see :func:`check_name`)."""
    return bool(_NAME.fullmatch(text)) and ".." not in text and (max_length is None or len(text) <= max_length)


def check_name(key: str, value: Any, what: str, where: str, *, max_length: Optional[int] = None,
               example: str = "my_experiment") -> str:
    """``value`` as text if it is one plain directory name, else a ConfigError naming ``key``, the value and a fix.

    A plain name: letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit, no ``..`` (so no
    ``/``, ``\\``, spaces, ``~`` or a leading dot), at most ``max_length`` characters when given.
    ``what``/``where``: what the name is and the directory it becomes, for the message ("An experiment name",
    "runs/<experiment.name>/<time>").
    """
    text = value if isinstance(value, str) else str(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if text is not None and is_plain_name(text, max_length):
        return text
    fixed = re.sub(r"[^\w.-]+", "_", str(value)).replace("..", "_").strip("._-")[:max_length] or example
    limit = f", at most {max_length} characters" if max_length else ""
    raise ConfigError(key, value, f"{what} is one directory name (it becomes {where}): letters, digits, '_', '-' and "
                      f"'.', starting with a letter or digit, no '/' or '..'{limit}. Use e.g. {key}={fixed}.")


def check_names(cfg: Any) -> None:
    """``model.name`` and ``experiment.name``: each a single directory name."""
    check_name("model.name", cfg.model.name, "A model name", "part of the default experiment and export names")
    check_name("experiment.name", cfg.experiment.name, "An experiment name", f"{cfg.runs_dir}/<experiment.name>/<time>")


def _limits(existing: Path) -> Tuple[int, int]:
    try:
        return os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX, or the filesystem does not say
        return 255, 4096


def _existing_ancestor(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        try:
            if candidate.exists() or candidate.is_symlink():
                return candidate
        except PermissionError:  # a component we may not look into: report it as the place that fails
            return candidate
        except OSError:  # e.g. a name too long to look up: it does not exist, so look further up
            continue
    return Path(path.anchor or "/")


def check_directory(key: str, value: Any, path: str, *, name_keys: Optional[List[Tuple[str, str]]] = None) -> None:
    """Check that the local directory ``path`` exists or can be created, without leaving anything behind.

    ``key``/``value``: the setting the path comes from. ``name_keys``: ``(key, name)`` of settings that
    contribute one component each (e.g. ``experiment.name``), named instead of ``key`` when their component
    is the one too long.
    """
    text = str(path)
    target = Path(os.path.abspath(os.path.expanduser(text[len("file://"):] if text.startswith("file://") else text)))
    base = _existing_ancestor(target)
    name_max, path_max = _limits(base if base.is_dir() else base.parent)
    for part in target.parts:
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > name_max:
            owner = next(((k, n) for k, n in (name_keys or []) if n == part), None)
            k, v = owner if owner else (key, value)
            raise ConfigError(k, v, f"A directory name of the run would be {size} bytes long ('{part[:24]}...'), and this "
                              f"filesystem allows {name_max} per name; use a shorter {k}.")
    if len(str(target).encode("utf-8", "surrogateescape")) >= path_max:
        raise ConfigError(key, value, f"The path {str(target)[:40]}... would be {len(str(target))} bytes long, over this "
                          f"filesystem's limit of {path_max}; use a shorter {key}.")
    if base.exists() and not base.is_dir():
        raise ConfigError(key, value, f"{base} is not a directory, so no directory can be created in it; choose another {key}, e.g. {key}=runs.")
    if base == target:
        if not os.access(base, os.W_OK | os.X_OK):
            raise ConfigError(key, value, f"{base} is not writable by this user; choose a directory you can write, e.g. {key}=runs.")
        return
    try:  # the only sure answer on every filesystem (read-only mounts, /proc, ACLs, root): create and remove
        probe = tempfile.mkdtemp(prefix=".tfscale-probe-", dir=base)
        os.rmdir(probe)
    except OSError as exc:
        raise ConfigError(key, value, f"No directory can be created in {base} ({exc.strerror or exc}); choose a "
                          f"directory you can write, e.g. {key}=runs.") from None


def _is_remote(uri: str) -> bool:
    """A bucket (or any non-``file``) URI, as :func:`orchestrator.artifacts.storage.is_remote` says."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    return scheme not in ("", "file")


def check_output_directories(cfg: Any) -> None:
    """The local directories this run writes: its run directory, the model repository, the TF.js output."""
    hydra = cfg.get("hydra") if hasattr(cfg, "get") else None
    run_dir = None
    if hydra is not None:
        try:
            run_dir = str(hydra.run.dir)
        except Exception:  # an incomplete hydra node (a config composed by hand): fall back to runs_dir
            run_dir = None
    runs_dir = str(cfg.runs_dir)
    if not _is_remote(runs_dir):
        names = [("experiment.name", str(cfg.experiment.name))]
        check_directory("runs_dir", cfg.runs_dir, run_dir or os.path.join(runs_dir, str(cfg.experiment.name)), name_keys=names)
    if cfg.export.enabled and not _is_remote(str(cfg.export.model_base)):
        check_directory("export.model_base", cfg.export.model_base,
                        os.path.join(str(cfg.export.model_base), str(cfg.export.model_name)),
                        name_keys=[("export.model_name", str(cfg.export.model_name))])
