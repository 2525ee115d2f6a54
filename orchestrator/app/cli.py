"""The ``tfscale`` command.

``tfscale [hydra flags] [overrides]`` composes ``conf/`` with Hydra and runs the experiment;
``tfscale inspect PATH`` shows (and runs) a SavedModel or TFLite file; ``tfscale serve`` and
``tfscale rollback`` manage a TF-Serving-compatible model repository.

Before Hydra runs anything, a single run's config is composed and validated here, so a bad option, key,
type or value is reported as one line naming the key, the value and the fix — without importing
TensorFlow and before a run directory or a model version exists.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

from orchestrator.artifacts.redact import redact_message
from orchestrator.config.compose import CONF_DIR, compose, normalize_overrides, translate_compose_error
from orchestrator.errors import ConfigError, TfscaleError
from orchestrator.launch.job_process import warm_start
from orchestrator.runtime import collection, supervisor

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

SUBCOMMANDS = {
    "inspect": "orchestrator.app.inspect:main",
    "serve": "orchestrator.app.serve:main",
    "rollback": "orchestrator.serving.cli:rollback_main",
    "data": "orchestrator.app.data_convert:main",
}
_VALUE_FLAGS = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-c", "--cfg", "-p", "--package",
                "--experimental-rerun"}
_NO_PREFLIGHT = {"-h", "--help", "--hydra-help", "--version", "--info", "-sc", "--shell-completion", "-m", "--multirun",
                 "--experimental-rerun"}

log = logging.getLogger("tfscale")


def split_args(argv: Sequence[str]) -> Tuple[List[str], dict]:
    """Separate Hydra's flags from the overrides (``key=value`` words)."""
    overrides, flags = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            name, eq, val = arg.partition("=")
            if name in _VALUE_FLAGS and not eq and i + 1 < len(argv):
                val = argv[i + 1]
                i += 1
            flags[name] = val if (eq or name in _VALUE_FLAGS) else True
        else:
            overrides.append(arg)
        i += 1
    return overrides, flags


def _compose_sweep_base(overrides: Sequence[str], flags: dict) -> Any:
    """Compose a sweep's overrides without its sweep values, so that a bad option, key or value is one line
    naming it, as for a single run; Hydra would otherwise print its own composition exception. The sweeper
    then validates each trial's config. Returns the composed config, ``hydra`` node included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = normalize_overrides(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:  # one line naming the override, with the quoting it needs
        raise translate_compose_error(exc, overrides) from exc
    fixed = [o.input_line for o in parsed if not o.is_sweep_override() and o.input_line is not None]
    return compose(fixed, flags.get("-cd") or flags.get("--config-dir"),
                   flags.get("-cn") or flags.get("--config-name") or "config", return_hydra_config=True)


def preflight(argv: Sequence[str]) -> Any:
    """Compose and validate a single run's config before Hydra starts it.

    For a sweep (``-m``), compose its overrides without the sweep values; returns that config (else None)."""
    overrides, flags = split_args(argv)
    if ("-m" in flags or "--multirun" in flags) and not any(f in flags for f in _NO_PREFLIGHT - {"-m", "--multirun"}):
        return _compose_sweep_base(overrides, flags)
    if any(f in flags for f in _NO_PREFLIGHT):
        return None
    cfg = compose(overrides, flags.get("-cd") or flags.get("--config-dir"),
                  flags.get("-cn") or flags.get("--config-name") or "config")
    if "-c" in flags or "--cfg" in flags:
        return None
    from orchestrator.config.validation import validate

    # Needed although hydra_task validates again: Hydra creates the run directory before it calls the task,
    # and this config (composed without --config-path) is not necessarily the one Hydra composes.
    validate(cfg)
    from orchestrator.artifacts import storage

    storage.preflight(cfg)
    return None


@warm_start  # a sweep job running it imports TensorFlow while it restores the job
def hydra_task(cfg: ExperimentConfig, *, validated: bool = False, run_uri: Optional[str] = None) -> Any:
    """The Hydra task function: validate, pick the backend, run, print a summary.

    Returns the chief's metrics, so sweepers read objectives from the return value. ``validated``: the
    caller already validated this run's config (``run_single``, whose ``run_job`` hands the task a deep copy
    of it without the ``hydra`` node), so it is not validated a second time. The run directory's
    ``status.json`` says ``running`` from the start and how the run ended on every way out this process can
    catch (a run killed with SIGKILL stays ``running`` with a dead pid).

    ``run_uri``: the run directory in a bucket (``runs_dir=gs://...``). Hydra's output directory is then a
    local temporary one (see ``run_single``) that the backend's task processes write; ``status.json`` is
    written to the bucket from the start, and the rest of the record is uploaded before the final status.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from orchestrator import launch as backends
    from orchestrator.artifacts.run_record import RunRecord
    from orchestrator.training.task import summary
    from orchestrator.config.schema import BackendName
    from orchestrator.config.validation import validate

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    record = RunRecord(run_dir)
    record.redact_hydra_files()  # Hydra wrote its copies of the config and overrides before calling us
    bucket = RunRecord(run_uri) if run_uri else None
    status = bucket or record

    def upload(strict: bool) -> None:
        if bucket is None:
            return
        try:
            bucket.upload(run_dir)
        except Exception as exc:
            if strict:
                raise
            log.error("could not upload the run record to %s: %s", run_uri, exc)  # keep the run's own outcome

    status.mark_running()
    try:
        if not validated:
            # A job of hydra.main or of a sweep. A study's driver validated it too, in another process; this
            # is the process that trains, whose devices (e.g. the GPUs the launcher gave it) the plan checks.
            validate(cfg)
        record.write_config(cfg)
        if cfg.backend.name != BackendName.local:
            from orchestrator.launch import warm_task

            warm_task.release()  # this backend starts its own task processes
        metrics = backends.get(cfg.backend.name).run(cfg, run_dir, run_uri=run_uri)
        upload(strict=True)
    except TfscaleError as exc:
        upload(strict=False)
        status.mark_failed(exc)
        if hc.mode == RunMode.MULTIRUN:
            raise
        print(f"tfscale: error: {redact_message(exc)}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except (KeyboardInterrupt, SystemExit) as exc:
        upload(strict=False)
        status.mark_interrupted(exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else None)
        raise
    except BaseException as exc:
        upload(strict=False)
        status.mark_failed(exc)
        raise
    status.mark_completed()
    print(summary(metrics))
    print(f"tfscale: run record {run_uri or run_dir}")
    return metrics


def _dispatch(name: str, argv: List[str]) -> int:
    import importlib

    module, _, fn = SUBCOMMANDS[name].partition(":")
    return int(getattr(importlib.import_module(module), fn)(argv) or 0)


def run_single(overrides: List[str], config_dir: Optional[str] = None, config_name: str = "config") -> None:
    """Compose once, validate, and run one job the way ``hydra.main`` runs it.

    ``hydra.main`` composes a single run twice (once to find the run mode, once to run); composing here once,
    with tfscale's error messages, keeps the fixed cost of a run small and errors readable.
    """
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.utils import run_job
    from hydra.types import HydraContext, RunMode

    from omegaconf import open_dict, read_write

    from orchestrator.artifacts import storage
    from orchestrator.config.schema import register_configs
    from orchestrator.config.validation import validate

    register_configs()
    overrides = normalize_overrides(overrides)
    search_path = create_automatic_config_search_path(None, None, str(CONF_DIR))
    if config_dir:
        path = Path(config_dir).resolve()
        if not path.is_dir():
            raise ConfigError("--config-dir", config_dir, f"No such directory ({path}); give a directory of config groups.")
        from hydra.core.config_search_path import SearchPathQuery

        search_path.prepend(provider="command-line", path=f"file://{path}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name="tfscale", config_search_path=search_path)
    local_run_dir: Optional[str] = None
    try:
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
            if any(o.is_sweep_override() for o in parsed):
                raise ConfigError("overrides", list(overrides), "Comma lists and sweeps run several jobs: add -m (tfscale -m ...).")
            cfg = hydra.compose_config(config_name=config_name, overrides=list(overrides), run_mode=RunMode.RUN,
                                       with_log_configuration=True)
        except ConfigError:
            raise
        except Exception as exc:  # Hydra and OmegaConf raise several unrelated types
            raise translate_compose_error(exc, overrides) from exc
        validate(cfg)  # before run_job creates the run directory; hydra_task is told not to repeat it
        storage.preflight(cfg)  # buckets reachable and writable: seconds of network, still before any write
        run_uri = str(cfg.hydra.run.dir)
        if storage.is_remote(run_uri):
            # Hydra writes .hydra/ and its log into hydra.run.dir and can only write a local directory. With a
            # bucket run directory that is a temporary directory, removed at the end; the run record goes to
            # the bucket through RunRecord (the .hydra/ copies redacted), so nothing lands in the working
            # directory.
            local_run_dir = tempfile.mkdtemp(prefix="tfscale-run-")
            with read_write(cfg.hydra), open_dict(cfg.hydra):
                cfg.hydra.run.dir = local_run_dir
            if not _keeps_the_record():
                run_uri = None
        else:
            run_uri = None
        if cfg.hydra.mode is None:
            cfg.hydra.mode = RunMode.RUN
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name=config_name)
        ret = run_job(hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
                      task_function=functools.partial(hydra_task, validated=True, run_uri=run_uri), config=cfg,
                      job_dir_key="hydra.run.dir", job_subdir_key=None)
        callbacks.on_run_end(config=cfg, config_name=config_name, job_return=ret)
        _ = ret.return_value  # re-raises what the task raised
    finally:
        GlobalHydra.instance().clear()
        if local_run_dir is not None:
            shutil.rmtree(local_run_dir, ignore_errors=True)


def _keeps_the_record() -> bool:
    """Whether this process writes the run record: not a non-chief replica of a job whose machines were started
    for it (Vertex runs ``tfscale`` on every replica, with the same ``hydra.run.dir``; the chief's record is the run's)."""
    from orchestrator.training.task import TaskIdentity

    return TaskIdentity.from_env().is_chief


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point of ``tfscale``."""
    entry_point = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    supervisor.install_signal_handlers()  # SIGTERM unwinds like Ctrl-C: every child is stopped on the way out
    if argv and argv[0] in SUBCOMMANDS:
        _exit_on_error(f"tfscale {argv[0]}", lambda: sys.exit(_dispatch(argv[0], argv[1:])))
    _exit_on_error("tfscale", lambda: _run(argv))
    if entry_point:
        import gc

        # The interpreter's final garbage collections would walk every object this process made (a study's
        # driver holds its configs, trials and matplotlib's state): tenths of a second before the command
        # returns, for memory its exit frees anyway (what reference counting frees is still finalised).
        gc.freeze()


def _exit_on_error(prefix: str, body: Callable[[], Any]) -> None:
    """Run ``body``; a tfscale error is one redacted line and its exit code, an interruption 130 or 143."""
    try:
        body()
    except TfscaleError as exc:
        print(f"{prefix}: error: {redact_message(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        print(f"{prefix}: {supervisor.interruption(exc)}", file=sys.stderr)
        sys.exit(supervisor.exit_code(exc))


def _runs_trials(flags: dict) -> bool:
    """Whether the command line runs a sweep's jobs: ``-m`` without a flag that only shows something."""
    return ("-m" in flags or "--multirun" in flags) and not any(
        f in flags for f in (_NO_PREFLIGHT - {"-m", "--multirun"}) | {"-c", "--cfg", "-p", "--package"})


def _prestart_trial_process() -> None:
    """Start a sweep's warm trial process first thing, before anything is composed.

    Its TensorFlow import takes seconds; started here, it overlaps everything the driver does before its first
    trial (composing the sweep, Hydra's start-up, the study), instead of starting only once the sweeper is set
    up. Whether the sweep's launcher uses it is known once its config is composed: if not, it is stopped then
    (:func:`_sweep_preflight`); until a launcher adopts it, it is killed outright when this process exits.
    """
    from orchestrator.launch import trial_pool, warm_task

    if not hasattr(os, "fork"):
        return
    # grace: the launchers' default stop_timeout_s; a pool with another tells the process when it adopts it.
    trial_pool.prestart(dict(os.environ), tensorflow=warm_task.enabled(), grace=10.0)


def _sweep_preflight(argv: List[str]) -> Any:
    """:func:`preflight` of a sweep whose warm trial process was started already: it stays only if the launcher
    the sweep selects runs its trials from warm processes (see :func:`_prestart_trial_process`). Returns the
    sweep's composed base config (None when there is none to compose)."""
    from orchestrator.launch import trial_pool

    try:
        cfg = preflight(argv)
        if cfg is not None:
            from orchestrator.launch.hydra_launchers import warm_pool_grace

            if warm_pool_grace(cfg) is not None:
                return cfg
    except BaseException:
        trial_pool.discard_prestarted()  # the error is reported at once, with nothing left running
        raise
    trial_pool.discard_prestarted()
    return cfg


def _run(argv: List[str]) -> None:
    """A single run, or Hydra's own path for ``-m``, ``--cfg``, ``--help`` and the like."""
    overrides, flags = split_args(argv)
    if not set(flags) - {"-cd", "--config-dir", "-cn", "--config-name"}:
        from orchestrator.launch import warm_task

        warm_task.start()  # imports TensorFlow in the task process while this one composes
        run_single(overrides, flags.get("-cd") or flags.get("--config-dir"),
                   flags.get("-cn") or flags.get("--config-name") or "config")
        return
    if _runs_trials(flags):
        # Paused until the sweep's first trials started (the sweeper resumes it): the driver builds the state it
        # keeps to its end meanwhile (see orchestrator.runtime.collection).
        collection.pause()
        try:
            _run_sweep(argv, overrides)
        finally:
            collection.resume()
        return
    preflight(argv)
    _run_hydra(argv, overrides)


def _run_sweep(argv: List[str], overrides: List[str]) -> None:
    from omegaconf import OmegaConf

    _prestart_trial_process()
    cfg = _sweep_preflight(argv)
    target = str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="") or "") if cfg is not None else ""
    if not target.startswith("hydra_plugins.tfscale_sweeper."):
        # Only tfscale's sweeper ends the pause (once its first trials started); under any other the driver
        # runs its whole sweep with the collector on.
        collection.resume()
    _run_hydra(argv, overrides)


def _run_hydra(argv: List[str], overrides: List[str]) -> None:
    """Hydra's own path for ``argv``: ``hydra.main`` with tfscale's task function and config store."""
    import hydra

    from orchestrator.config.schema import register_configs

    register_configs()
    fixed = dict(zip(overrides, normalize_overrides(overrides)))  # the words Hydra reads, as run_single composes them
    sys.argv = [sys.argv[0] or "tfscale", *(fixed.get(a, a) for a in argv)]
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(hydra_task)()


if __name__ == "__main__":
    main()
