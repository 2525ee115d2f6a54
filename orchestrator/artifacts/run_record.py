"""The run record: what a run was (config, overrides, provenance), how it ended, and what it produced.

This module is the only writer of a run directory's record files; every write goes through the publisher
(atomic, readable by others) and through the redaction rule (:mod:`orchestrator.artifacts.redact`):

- ``config.resolved.yaml``: the resolved config the run (and every task process) starts from;
- ``.hydra/config.yaml``, ``overrides.yaml``, ``hydra.yaml``: Hydra's copies, rewritten redacted;
- ``provenance.json``: the git SHA and dirty flag of the directory tfscale ran from, package versions,
  the topology as applied and the TF_CONFIG (each model version carries the same in
  ``assets.extra/tfscale.json``);
- ``metrics.json``: the chief's results; a backend adds its facts with :meth:`RunRecord.add_facts`;
- ``epochs.jsonl``: one line per epoch; ``evaluator/``: the sidecar evaluator's results;
- ``status.json``: ``running`` (with pid and host) from the start, then ``completed``, ``failed`` (with the
  error line) or ``interrupted``. A run killed where nothing can be caught (SIGKILL, out of memory) stays
  ``running`` with a dead pid; :meth:`RunRecord.state` reads that as :attr:`RunState.KILLED`.

Because ``config.resolved.yaml`` is redacted, a secret given as an override never reaches task processes
either: secrets come from their environment, which task processes inherit.

``run_dir`` may be a bucket URI (``runs_dir=gs://b/runs``): each file is then one object, written whole. A
bucket has no lock, so a URI run directory has one writer, the process that drives the run; the task
processes write a local run directory, which the driver uploads with :meth:`RunRecord.upload` at the end.
"""
from __future__ import annotations

import enum
import fcntl
import json
import os
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from orchestrator.artifacts import publish, storage
from orchestrator.artifacts.redact import redact, redact_args, redact_message  # noqa: F401  (redact_args: public here too)

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

PACKAGES = ("tfscale", "tensorflow", "tf-keras", "hydra-core", "omegaconf", "numpy", "scikit-learn",
            "ray", "optuna", "tensorflow-serving-api", "ai-edge-litert", "tensorflow-model-optimization",
            "google-cloud-aiplatform")

CONFIG_FILE = "config.resolved.yaml"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.json"
EPOCHS_FILE = "epochs.jsonl"
STATUS_FILE = "status.json"
EVALUATOR_DIR = "evaluator"
EVALUATIONS_FILE = "evaluations.jsonl"
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
#: Set by tfscale in processes it starts on a Ray node: that node's ID, IP and host (JSON), kept in provenance.
RAY_NODE_ENV = "TFSCALE_RAY_NODE"


class RunState(str, enum.Enum):
    """How a run stands, as ``status.json`` records it (KILLED is only ever read, never written)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    KILLED = "killed"  # recorded RUNNING, but its process is gone: SIGKILL, out of memory, power loss


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _process_start(pid: int) -> Optional[int]:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start: Optional[int]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return start is None or _process_start(pid) in (None, start)


class RunRecord:
    """Writer (and reader) of the record files of the run directory ``run_dir``."""

    def __init__(self, run_dir: Any):
        self.remote = storage.is_remote(run_dir)
        #: a Path, or the URI (str) of a run directory in a bucket
        self.run_dir: Any = str(run_dir).rstrip("/") if self.remote else Path(run_dir)
        self._status: Optional[Dict[str, Any]] = None  # what mark_running wrote, kept for the end state

    def path(self, *parts: str) -> Any:
        """A file of this run directory (a URI for a bucket run directory)."""
        return storage.join(self.run_dir, *parts) if self.remote else self.run_dir.joinpath(*parts)

    def _read(self, name: str) -> str:
        return storage.read_text(self.path(name)) if self.remote else self.path(name).read_text()

    def upload(self, local_dir: Path, *, skip: Callable[[str], bool] = lambda rel: False) -> None:
        """Copy the local run directory ``local_dir`` (what the task processes wrote) into this bucket run directory.

        Hydra's copies in ``.hydra/`` are redacted first; ``status.json`` is this record's own; ``skip(rel)``
        leaves out more (a task's scratch copy of a run leaves out its backup, mirrored on its own).
        """
        RunRecord(local_dir).redact_hydra_files()
        publish.publish_tree(Path(local_dir), self.run_dir, skip=lambda rel: rel == STATUS_FILE or skip(rel))

    # -------------------------------------------------------------------------------- what the run was
    def write_config(self, cfg: ExperimentConfig) -> Path:
        """``config.resolved.yaml``: ``cfg`` resolved and redacted."""
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg) else cfg
        return publish.write_text(self.path(CONFIG_FILE), _yaml_text(redact(data)))

    def redact_hydra_files(self) -> None:
        """Rewrite Hydra's copies in ``.hydra/`` redacted (only those holding a secret are touched)."""
        import yaml

        if self.remote:  # Hydra writes only local directories; RunRecord.upload redacts before copying
            return
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        for name in HYDRA_FILES:
            path = self.run_dir / ".hydra" / name
            try:
                data = yaml.load(path.read_text(), Loader=loader)
            except (OSError, yaml.YAMLError):
                continue
            clean = redact(data)
            if clean != data:
                publish.write_text(path, _yaml_text(clean))

    def write_provenance(self, record: Dict[str, Any]) -> Path:
        """``provenance.json`` (see :func:`provenance`)."""
        return publish.write_json(self.path(PROVENANCE_FILE), redact(record))

    # -------------------------------------------------------------------------------- what it produced
    def write_metrics(self, metrics: Dict[str, Any]) -> Path:
        """``metrics.json``: the chief's results, replacing any earlier ones."""
        with self._locked():
            return publish.write_json(self.path(METRICS_FILE), redact(metrics))

    def add_facts(self, facts: Dict[str, Any]) -> Dict[str, Any]:
        """Merge ``facts`` (top-level keys) into ``metrics.json`` under a lock; return the merged metrics.

        Backends use this to add what only they know (restarts, tasks, the Vertex job) to what the chief
        wrote, without a second writer of the file.
        """
        path = self.path(METRICS_FILE)
        with self._locked():
            try:
                metrics = json.loads(self._read(METRICS_FILE))
            except FileNotFoundError:
                metrics = {}
            metrics.update(redact(facts))
            publish.write_json(path, metrics)
        return metrics

    def add_provenance(self, facts: Dict[str, Any]) -> Dict[str, Any]:
        """Merge ``facts`` (top-level keys) into ``provenance.json``; return the merged provenance.

        A backend adds where each task ran (a Ray node ID and host per task) to what the chief recorded.
        """
        with self._locked():
            try:
                record = json.loads(self._read(PROVENANCE_FILE))
            except FileNotFoundError:
                record = {}
            record.update(redact(facts))
            publish.write_json(self.path(PROVENANCE_FILE), record)
        return record

    def provenance(self) -> Optional[Dict[str, Any]]:
        """``provenance.json`` as written, or None."""
        try:
            return json.loads(self._read(PROVENANCE_FILE))
        except FileNotFoundError:
            return None

    def metrics(self) -> Optional[Dict[str, Any]]:
        """The metrics written so far, or None."""
        try:
            return json.loads(self._read(METRICS_FILE))
        except FileNotFoundError:
            return None

    def append_epoch(self, entry: Dict[str, Any]) -> None:
        """Add one epoch's line to ``epochs.jsonl`` (read live by studies for early stopping)."""
        _append_line(self.path(EPOCHS_FILE), entry)

    def record_evaluation(self, entry: Dict[str, Any], summary: Dict[str, Any]) -> None:
        """The sidecar evaluator's result: a line in ``evaluator/evaluations.jsonl``, ``summary`` as its metrics.json."""
        _append_line(self.path(EVALUATOR_DIR, EVALUATIONS_FILE), entry)
        publish.write_json(self.path(EVALUATOR_DIR, METRICS_FILE), redact(summary))

    def write_json(self, name: str, obj: Any) -> Path:
        """Another JSON file of the record (``vertex.json``...), redacted."""
        return publish.write_json(self.path(name), redact(obj))

    def write_yaml(self, name: str, data: Any) -> Path:
        """Another YAML file of the record (a study's ``multirun.yaml``...), redacted."""
        return publish.write_text(self.path(name), _yaml_text(redact(data)))

    def write_text(self, name: str, text: str) -> Path:
        """Another text file of the record (e.g. the gcloud YAML), redacted as text."""
        return publish.write_text(self.path(name), redact(text))

    # -------------------------------------------------------------------------------- how it ended
    def mark_running(self) -> None:
        """``status.json`` = running, with this process's pid and host."""
        pid = os.getpid()
        self._status = {"state": RunState.RUNNING.value, "pid": pid, "pid_start": _process_start(pid),
                        "host": socket.gethostname(), "started": _now()}
        publish.write_json(self.path(STATUS_FILE), self._status)

    def mark_completed(self) -> None:
        """The run finished and recorded its results."""
        self._mark(RunState.COMPLETED)

    def mark_failed(self, error: BaseException) -> None:
        """The run failed; the first line of the error is kept (redacted)."""
        line = (redact_message(error).strip().splitlines() or [""])[0]
        self._mark(RunState.FAILED, error=f"{type(error).__name__}: {line}" if line else type(error).__name__)

    def mark_interrupted(self, exit_code: Optional[int] = None) -> None:
        """The run was stopped (Ctrl-C, SIGTERM, SystemExit) before it finished."""
        self._mark(RunState.INTERRUPTED, exit_code=exit_code)

    def _mark(self, state: RunState, **extra: Any) -> None:
        status = dict(self._status or self.status() or {})
        status.update({"state": state.value, "ended": _now()}, **{k: v for k, v in extra.items() if v is not None})
        try:
            publish.write_json(self.path(STATUS_FILE), status)
        except OSError:  # never hide the run's own outcome behind a failure to record it
            pass

    def status(self) -> Optional[Dict[str, Any]]:
        """``status.json`` as written, or None for a run without one."""
        try:
            return json.loads(self._read(STATUS_FILE))
        except (FileNotFoundError, ValueError):
            return None

    def state(self) -> Optional[RunState]:
        """The run's state; a ``running`` run whose process is gone on this host reads as KILLED."""
        status = self.status()
        if status is None:
            return None
        state = RunState(status["state"])
        if state is RunState.RUNNING and status.get("host") == socket.gethostname() and status.get("pid"):
            if not _alive(int(status["pid"]), status.get("pid_start")):
                return RunState.KILLED
        return state

    def _locked(self):
        if self.remote:  # one writer per bucket run directory (see the module doc)
            import contextlib

            return contextlib.nullcontext()
        return _DirLock(self.run_dir)


class _DirLock:
    """An exclusive flock on the run directory itself (no lock file left behind)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def __enter__(self) -> "_DirLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def _yaml_text(data: Any) -> str:
    """Block-style YAML in the mapping's own order (libyaml's dumper when present: a tenth of OmegaConf's time)."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _append_line(path: Any, entry: Dict[str, Any]) -> None:
    """One JSON line, appended with a single write so concurrent readers never see half a line."""
    data = (json.dumps(redact(entry), default=str) + "\n").encode()
    if storage.is_remote(path):  # objects cannot be appended to: rewrite it whole (its one writer, see above)
        try:
            old = storage.read_bytes(path)
        except FileNotFoundError:
            old = b""
        publish.publish_file(path, old + data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, publish.FILE_MODE)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def git_state(cwd: Optional[Path] = None) -> Dict[str, Any]:
    """SHA, branch and dirty flag of the git checkout containing ``cwd`` (``{}`` outside git)."""
    from orchestrator.runtime import supervisor

    def git(*args: str) -> str:
        return supervisor.run(["git", *args], cwd=cwd, timeout=10, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
    except (OSError, supervisor.SubprocessError):
        return {}
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, supervisor.SubprocessError):
        dirty, branch = None, None
    return {"sha": sha, "dirty": dirty, "branch": branch}


def package_versions() -> Dict[str, str]:
    """Installed versions of the packages a result depends on."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def provenance(cfg: ExperimentConfig, *, topology: Optional[Dict[str, Any]] = None, overrides: Optional[list] = None) -> Dict[str, Any]:
    """Where and from what a run came: commit, packages, interpreter, host, topology, TF_CONFIG, seed."""
    tf_config = os.environ.get("TF_CONFIG")
    ray_node = os.environ.get(RAY_NODE_ENV)
    return {
        "git": git_state(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "command": redact_args(sys.argv),
        "overrides": redact_args(overrides),
        "seed": int(cfg.trainer.seed),
        "topology": topology,
        "tf_config": json.loads(tf_config) if tf_config else None,
        **({"ray_node": json.loads(ray_node)} if ray_node else {}),
    }
