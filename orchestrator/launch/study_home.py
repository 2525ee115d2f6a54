"""Where a study lives, what it is called and which earlier studies it starts from.

* **The study node.** The root ``study:`` node is a spec (native, AI Platform or Vertex form) plus the
  keys of :data:`orchestrator.config.study_keys.NODE_KEYS`: ``name``, ``param_map`` and
  ``warm_start_from``. :func:`parse_study_node` splits them.
* **The name** is ``study.name``, else the option picked with ``study=<option>``. It names the study's
  directory, so it must be one plain directory name (:func:`check_study_name`).
* **The directory** is ``<runs_dir>/studies/<name>`` unless the user set ``hydra.sweep.dir`` (in a study
  file, a config of their own or on the command line): :func:`study_dirs`. Hydra's own default is a new
  timestamped ``multirun_*`` directory per command, which would start a new study on every run instead of
  resuming it.
* **Warm starts**: ``study.warm_start_from: [<name or directory>, ...]`` and AI Platform's
  ``trainingInput.hyperparameters.resumePreviousJobId`` name earlier studies whose COMPLETED trials the
  designer learns from (:func:`load_warm_starts`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from orchestrator.config.paths import check_name, is_plain_name
from orchestrator.config.study_keys import split_node
from orchestrator.errors import ConfigError

_SUBDIR = "trial_${hydra.job.num}"


@dataclass(frozen=True)
class StudyNode:
    """The parts of the root ``study:`` node."""

    spec: Any  # tuners.StudySpec
    name: str
    warm_start_from: Tuple[str, ...] = ()
    warm_start_key: str = "study.warm_start_from"  # the key the sources came from, for messages


def check_study_name(name: Any, key: str = "study.name") -> str:
    """``name`` if it is one plain directory name of at most 128 characters (see
    :func:`orchestrator.config.paths.check_name`); a ConfigError naming the key, the value and a fix otherwise."""
    return check_name(key, name, "A study name", "runs/studies/<name>", max_length=128, example="my_study")


def parse_study_node(node: Optional[Mapping[str, Any]], default_name: Optional[str] = None) -> StudyNode:
    """The spec, name and warm-start sources of the root ``study:`` node.

    ``default_name``: the study option picked (``hydra.runtime.choices.study``), the name when the node
    sets none.

    Raises:
        ConfigError: no study, a bad name or a bad ``warm_start_from``.
        StudySpecError: the spec is invalid (the message names the field and the fix).
    """
    from tuners import StudySpec

    if node is None:
        raise ConfigError("study", None, "hydra/sweeper=tfscale runs a study: pick one with study=NAME "
                                         "(an option of conf/study/), e.g. tfscale -m study=digits_lr_units.")
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    if not isinstance(raw, dict):
        raise ConfigError("study", raw, "The study must be a mapping (see conf/study/*.yaml).")
    raw, extras = split_node(raw)
    name = extras.get("name")
    if name is None:
        if not default_name:
            raise ConfigError("study.name", None, "The study has no name: set study.name=<name> (its directory "
                                                  "is runs/studies/<name>, where the same command resumes it).")
        name = check_study_name(default_name.replace("/", "-"), "study")
    name = check_study_name(name)
    sources, key = _warm_start_sources(raw, extras.get("warm_start_from"))
    spec = StudySpec.from_dict(raw, extras.get("param_map"))
    return StudyNode(spec, name, sources, key)


def _warm_start_sources(raw: dict, given: Any) -> Tuple[Tuple[str, ...], str]:
    """The earlier studies of ``warm_start_from`` (``given``) and of the spec's AI Platform
    ``resumePreviousJobId``, and the key they were given under."""
    sources: List[Any] = []
    key = "study.warm_start_from"
    if given is not None:
        sources += list(given) if isinstance(given, (list, tuple)) else [given]
    hyper, where = raw, "study"
    if isinstance(hyper.get("trainingInput"), dict):
        hyper, where = hyper["trainingInput"], f"{where}.trainingInput"
    if isinstance(hyper.get("hyperparameters"), dict):
        hyper, where = hyper["hyperparameters"], f"{where}.hyperparameters"
    previous = hyper.get("resumePreviousJobId")
    if previous is not None:
        key = f"{where}.resumePreviousJobId" if given is None else key
        sources.append(previous)
    for source in sources:
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(key, source, "Name earlier studies by study name (their directory is "
                                           "runs/studies/<name>) or by directory, e.g. [digits_lr_units].")
    return tuple(s.strip() for s in sources), key


# ------------------------------------------------------------------------------------ the directory
def _default_sweep_dirs() -> List[str]:
    """``hydra.sweep.dir`` as tfscale's root config and Hydra's own output config set it (unresolved)."""
    import hydra

    from orchestrator.config.compose import CONF_DIR

    out = []
    for path, keys in ((CONF_DIR / "config.yaml", ("hydra", "sweep", "dir")),
                       (Path(hydra.__file__).parent / "conf" / "hydra" / "output" / "default.yaml", ("sweep", "dir"))):
        try:
            value: Any = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except OSError:
            continue
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str):
            out.append(value)
    return out


def _set_on_command_line(config: DictConfig, key: str) -> bool:
    node = OmegaConf.select(config, "hydra.overrides.hydra", default=None)
    # Unresolved: an override's value may hold interpolations only a job can resolve (${hydra.job.num}).
    overrides = OmegaConf.to_container(node, resolve=False) if node is not None else []
    return any(str(o).lstrip("+~").partition("=")[0] == key for o in overrides)


def _unresolved(config: DictConfig, key: str) -> Any:
    return OmegaConf.to_container(config.hydra.sweep, resolve=False).get(key)


def study_dirs(config: DictConfig, name: str) -> Tuple[Optional[str], Optional[str]]:
    """``(dir, subdir)`` a study should use where the user set neither: ``<runs_dir>/studies/<name>`` and
    ``trial_<job number>``; ``None`` for each one the user set (in any config file or on the command line)."""
    from orchestrator.artifacts import storage

    home = None
    if not _set_on_command_line(config, "hydra.sweep.dir") and _unresolved(config, "dir") in _default_sweep_dirs():
        runs_dir = str(config.get("runs_dir") or "runs")
        home = storage.join(runs_dir, "studies", name) if storage.is_remote(runs_dir) else str(Path(runs_dir) / "studies" / name)
    subdir = None
    if not _set_on_command_line(config, "hydra.sweep.subdir") and _unresolved(config, "subdir") == "${hydra.job.num}":
        subdir = _SUBDIR
    return home, subdir


# ------------------------------------------------------------------------------------ warm starts
def _location(source: str, runs_dir: str) -> str:
    """The directory (or store file) a warm-start source names: a plain name is a study under
    ``<runs_dir>/studies``; anything else is a path or bucket URI."""
    from orchestrator.artifacts import storage

    if is_plain_name(source, 128) and not source.endswith((".db", ".sqlite", ".sqlite3")):
        return storage.join(runs_dir, "studies", source) if storage.is_remote(runs_dir) else str(Path(runs_dir) / "studies" / source)
    return source if storage.is_remote(source) else os.path.expanduser(source)


def load_warm_starts(spec: Any, node: StudyNode, *, runs_dir: str, own_store: str) -> List[Any]:
    """The :class:`tuners.PriorStudy` of every earlier study ``node`` warm-starts from, read before anything
    of this study is written.

    Raises:
        ConfigError: a source is missing, is this study itself, or searched another space (the message names
            every differing parameter).
    """
    from tuners import StudyStore, WarmStartError, load_prior_trials

    from orchestrator.artifacts import storage

    out = []
    own = os.path.realpath(own_store) if own_store != ":memory:" else own_store
    for source in node.warm_start_from:
        location = _location(source, runs_dir)
        with tempfile.TemporaryDirectory(prefix="tfscale-warm-start-") as scratch:
            if storage.is_remote(location):
                remote = location if location.endswith(".db") else storage.join(location, StudyStore.FILENAME)
                try:
                    data = storage.read_bytes(remote)
                except FileNotFoundError:
                    raise ConfigError(node.warm_start_key, source, f"No study store at {remote}. Give the name of "
                                                                   f"a study that ran, or its directory.") from None
                (Path(scratch) / StudyStore.FILENAME).write_bytes(data)
                location = scratch
            elif os.path.realpath(StudyStore.resolve(location)) == own:
                raise ConfigError(node.warm_start_key, source, f"That is this study itself ({own_store}); a resumed "
                                                               f"study keeps its own trials. Name earlier studies.")
            try:
                out.append(load_prior_trials(spec, location, source=source))
            except WarmStartError as exc:
                raise ConfigError(node.warm_start_key, source, str(exc)) from None
    return out


def warm_start_line(prior: Sequence[Any]) -> Optional[str]:
    """The driver's line about the trials a warm start feeds to the designer, or None without one."""
    if not prior:
        return None
    parts = []
    for p in prior:
        left_out = f", {p.outside} outside this study's ranges left out" if p.outside else ""
        parts.append(f"{len(p.trials)} from '{p.source}'{left_out}")
    total = sum(len(p.trials) for p in prior)
    return (f"[study] warm start: the designer learns from {total} completed trial{'s' if total != 1 else ''} of "
            f"earlier studies ({'; '.join(parts)}); they do not count against max_trials")
