"""The Hydra sweeper of ``tfscale -m study=NAME``: a :class:`~tuners.Study` driven through a Hydra launcher.

The sweeper decides *what* runs, one trial at a time, and keeps every slot busy: whenever fewer than
``max_parallel_trials`` trials run, it asks the study for one suggestion (the designer knows the trials still
running), turns it into an override list (the command line's overrides + the trial's ``key=value`` pairs),
composes and validates its config once — an invalid one is FAILED without a process — and hands that config
to the launcher, whose job numbers are the trial ids (``hydra.sweep.subdir`` may use ``${hydra.job.num}``).
tfscale's launchers take one job at a time (``open``/``start``/``poll``/``stop``, see
:mod:`orchestrator.launch.hydra_launchers`); any other Hydra launcher gets one ``launch`` call per trial.
While trials run it reads each one's ``epochs.jsonl`` (and ``report_metric`` lines) into the study as
measurements and stops the trials the early stopping rule rejects; as soon as a trial ends (completed,
failed or stopped) it is recorded in the study store, with its start and end times, and the next one starts.

**The study** is the root ``study:`` node: the native form of :meth:`StudySpec.from_dict`, or an AI
Platform (``trainingInput: ...``) or Vertex (``studySpec: ...``) dict given verbatim, plus

* ``name`` — the study's name (default: the ``study=`` option); the study lives in
  ``<runs_dir>/studies/<name>`` unless ``hydra.sweep.dir`` is set, so the same command resumes it;
* ``param_map`` — AI Platform/Vertex only: ``parameterName`` → config key;
* ``warm_start_from`` — earlier studies whose completed trials the designer learns from.

See :mod:`orchestrator.launch.study_home`. One driver runs a study at a time (the store's driver lock; a
study in a bucket also by a lease in the bucket, :mod:`orchestrator.launch.study_lease`, renewed while the
driver runs and checked before every upload).

**The objectives** of a trial — the value of each study metric, by its tag — are read by
:mod:`orchestrator.launch.objectives`: from the trial's return value (``metrics.json``), else its
TensorBoard event files, else its ``report_metric`` lines. A multi-objective study (``metrics:``) ends by
printing its Pareto set, each point with its overrides and run directory.

If the first trial to finish reports a tag nowhere, the study stops with an error naming the tag and
the tags that were found.
"""
from __future__ import annotations

import logging
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from orchestrator.errors import ConfigError, TfscaleError
from orchestrator.launch.objectives import (  # noqa: F401  (objective_from_* re-exported for callers)
    epoch_key,
    objective_from_files,
    objective_from_metrics,
    tags_found,
    trial_objectives,
)
from orchestrator.launch.study_lease import LEASE_DIR, LeaseLostError
from orchestrator.launch.trial_channel import TrialChannel
from orchestrator.runtime import collection, supervisor

log = logging.getLogger("tfscale.study")

_SPLITS = ("validation", "test", "train")


# ------------------------------------------------------------------------------------ study spec
def study_spec(node: Optional[Mapping[str, Any]], default_name: Optional[str] = None) -> Tuple[Any, str]:
    """The :class:`StudySpec` and name of the root ``study:`` config node (see
    :func:`orchestrator.launch.study_home.parse_study_node`, which also gives its warm-start sources).

    Raises:
        ConfigError: no study is selected, or its name is not one plain directory name.
        StudySpecError: the spec is invalid (the message names the field and the fix).
    """
    from orchestrator.launch.study_home import parse_study_node

    parsed = parse_study_node(node, default_name)
    return parsed.spec, parsed.name


# ------------------------------------------------------------------------------------------ sweeper
@dataclass
class _Active:
    """A trial the sweeper started: its channel, the steps of its curve already measured, whether it was stopped."""

    trial: Any
    channel: TrialChannel
    seen: Set[int]
    stopped: bool = False


class _OneJobPerCall:
    """The incremental launcher API over a launcher that has only Hydra's ``launch``: one call per job.

    Each call runs on a thread of its own, so jobs still start as slots free; Hydra's basic launcher runs its
    job in this very process, so it gets one slot.
    """

    def __init__(self, launcher: Any) -> None:
        import queue

        self.launcher = launcher
        self._ended: "queue.Queue[Tuple[Any, Any]]" = queue.Queue()

    def job(self, overrides: Sequence[str], num: int, config: DictConfig) -> Any:
        from orchestrator.launch.hydra_launchers import Job

        channel = TrialChannel.of_job(config)
        channel.dir.mkdir(parents=True, exist_ok=True)
        return Job(num=num, overrides=list(overrides), config=config, channel=channel)

    def open(self, parallel: int) -> int:
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher

        return 1 if isinstance(self.launcher, BasicLauncher) else parallel

    def start(self, job: Any) -> None:
        def run() -> None:
            try:
                self._ended.put((job, self.launcher.launch([job.overrides], initial_job_idx=job.num)[0]))
            except BaseException as exc:  # re-raised by poll() in the driver's thread
                self._ended.put((job, exc))

        threading.Thread(target=run, daemon=True, name=f"tfscale-trial-{job.num}").start()

    def poll(self, timeout: float) -> List[Tuple[Any, JobReturn]]:
        import queue

        ended = []
        try:
            ended.append(self._ended.get(timeout=max(timeout, 0.001)))
            while True:
                ended.append(self._ended.get_nowait())
        except queue.Empty:
            pass
        for _, ret in ended:
            if isinstance(ret, BaseException):
                raise ret
        return ended

    def stop(self, num: Optional[int] = None) -> None:
        """Ask through the channel (the launcher stops the job if it watches it); the calls end with the jobs."""


class StudySweeper(Sweeper):
    """Runs the study of the root ``study:`` node; see the module docstring."""

    def __init__(self, store: Optional[str] = None, poll_interval_s: float = 1.0, plots: bool = True,
                 lease_ttl_s: float = 120.0) -> None:
        self.store = store
        self.poll_interval_s = float(poll_interval_s)
        self.lease_ttl_s = float(lease_ttl_s)
        self._lease: Any = None  # a bucket study's lease (orchestrator.launch.study_lease), while this driver holds it
        self.plots = bool(plots)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None
        self._task_function: Optional[TaskFunction] = None
        self._tag_seen = False
        self._validated: Set[Tuple[str, ...]] = set()  # override lists whose config passed validate()
        self._composer: Any = None  # the trials' JobComposer, once their shared overrides are known
        self._dir_overrides: List[str] = []  # the study's hydra.sweep.dir/subdir, for each trial's job config
        self._plotting: Optional[threading.Thread] = None  # imports matplotlib while the trials run

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from orchestrator.launch.hydra_launchers import prepare

        self.config = config
        self.hydra_context = hydra_context
        self._task_function = task_function
        prepare(config, task_function)  # the launcher's warm trial process imports while the study is set up

    # -- entry point ------------------------------------------------------------------------------
    def sweep(self, arguments: List[str]) -> Any:
        from tuners import StudyFailedError, StudySpecError, StudyStoreError

        # SIGTERM ends the driver like Ctrl-C: the launchers stop the running trials and the study store keeps
        # them ACTIVE, so the next run of the same command re-runs them.
        supervisor.install_signal_handlers()
        try:
            return self._sweep(list(arguments))
        except StudySpecError as exc:
            where = (self.config.get("study") or {}).get("name", "") if self.config is not None else ""
            print(f"tfscale: error: invalid study {where!r} (the study: node; override a field with "
                  f"study.<field>=...): {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except StudyStoreError as exc:
            print(f"tfscale: error: study store: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except StudyFailedError as exc:
            print(f"tfscale: error: study stopped: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except TfscaleError as exc:
            print(f"tfscale: error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        except (KeyboardInterrupt, SystemExit) as exc:
            # Running trials are stopped by the launchers (and the supervisor at exit) and stay ACTIVE in the store.
            word = supervisor.interruption(exc) if isinstance(exc, KeyboardInterrupt) else "interrupted"
            print(f"[study] {word}: running trials were stopped; run the same command again to resume.",
                  file=sys.stderr, flush=True)
            raise SystemExit(exc.code if isinstance(exc, SystemExit) else supervisor.exit_code(exc)) from None

    def _sweep(self, arguments: List[str]) -> List[Sequence[JobReturn]]:
        from orchestrator.launch import study_home

        assert self.config is not None and self.hydra_context is not None
        node = study_home.parse_study_node(
            self.config.get("study"), OmegaConf.select(self.config, "hydra.runtime.choices.study", default=None))
        spec, name = node.spec, node.name
        base = self._base_overrides(arguments)
        self._validate(spec, base)

        sweep_dir, study_uri = self._local_sweep_dir(name)
        try:
            return self._drive(spec, node, name, base, sweep_dir, study_uri)
        finally:
            if self._lease is not None:  # the next driver, on any machine, may start at once
                self._release_lease()

    def _drive(self, spec: Any, node: Any, name: str, base: List[str], sweep_dir: Path,
               study_uri: Optional[str]) -> List[Sequence[JobReturn]]:
        from tuners import Study, StudyStore, progress_line, write_results

        from orchestrator.artifacts.run_record import RunRecord
        from orchestrator.launch import study_home

        # Each trial's job config is composed anew from the command line: give it the study's directories too.
        base = [*base, *self._dir_overrides]
        prior = study_home.load_warm_starts(spec, node, runs_dir=str(self.config.get("runs_dir") or "runs"),
                                            own_store=StudyStore.resolve(self.store or sweep_dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # The store's driver lock comes first: a second driver on this study stops here, having written nothing.
        study = Study(spec, store=self.store or sweep_dir, prior_trials=[t for p in prior for t in p.trials])
        if study.previous_driver:
            print(f"[study] the previous driver of '{name}' (host {study.previous_driver.get('host')}, pid "
                  f"{study.previous_driver.get('pid')}) ended without closing the study; taking it over.", flush=True)
        RunRecord(sweep_dir).write_yaml("multirun.yaml", OmegaConf.to_container(self.config, resolve=False, enum_to_str=True))
        if study.resumed:
            print(f"[study] resuming '{name}' in {sweep_dir}: {progress_line(study)}", flush=True)
        else:
            print(f"[study] '{name}': {spec.max_trials} trials, {spec.max_parallel_trials} in parallel, "
                  f"{spec.algorithm.resolved().name}, objective{'s' if spec.is_multi_objective else ''} "
                  f"{', '.join(f'{m.goal.name} {m.tag}' for m in spec.metrics)}; "
                  f"results in {study_uri or sweep_dir}", flush=True)
        if study_home.warm_start_line(prior):
            print(study_home.warm_start_line(prior), flush=True)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=self._task_function, config=self.config)
        self._tag_seen = any(t.objective is not None for t in study.trials)
        try:
            returns = self._run_trials(study, base, sweep_dir, study_uri)
        except LeaseLostError:
            raise  # the study is another driver's now: its files are not to be overwritten
        except BaseException:
            write_results(study, sweep_dir, plots=False)
            self._upload(sweep_dir, study_uri)
            raise
        if self._plotting is not None:
            self._plotting.join()
        # The plots drawn in parallel processes: the trials are over, every core is free.
        paths = write_results(study, sweep_dir, plots=self.plots, render=supervisor.run_forked)
        self._upload(sweep_dir, study_uri)
        best = study.best_trial
        if best is not None:
            print(f"[study] best trial {best.id}: {spec.metric.tag}={best.objective:.6g}  "
                  f"{' '.join(best.overrides())}", flush=True)
        if spec.is_multi_objective:
            from tuners.pareto import pareto_lines

            print("\n".join(pareto_lines(spec, study.trials)), flush=True)
        print(f"[study] results: {study_uri or ', '.join(str(p) for p in paths.values())}", flush=True)
        study.close()
        if study_uri is not None:  # everything is in the bucket now: the local scratch copy goes
            import shutil

            shutil.rmtree(sweep_dir, ignore_errors=True)
        return returns

    # -- a study kept in a bucket ------------------------------------------------------------------------
    def _local_sweep_dir(self, name: Optional[str] = None) -> Tuple[Path, Optional[str]]:
        """The local study directory, and the bucket URI it mirrors when the study directory is one.

        A study named ``name`` lives in ``<runs_dir>/studies/<name>`` (trials in ``trial_<id>``) unless the
        user set ``hydra.sweep.dir`` (``subdir``) somewhere, so that the same command resumes it; Hydra's
        default would be a new timestamped directory per command. ``self._dir_overrides`` gets the
        overrides that give each trial's job config the same directories.

        The study store, the trials' run directories and Hydra's job outputs need a local directory (trial
        processes write there, and a study is resumed from its store); a bucket study directory is
        downloaded into a temporary one first (resuming a study kept there) and uploaded after every batch.
        Before anything is downloaded the driver takes the study's lease in the bucket
        (:mod:`orchestrator.launch.study_lease`): while another driver holds it, this one stops here having
        written nothing, on any machine.
        """
        from omegaconf import open_dict, read_write
        from tuners.study_spec import format_override_value

        from orchestrator.artifacts import storage
        from orchestrator.launch.study_home import study_dirs

        dirs: Dict[str, str] = {}
        if name is not None:
            home, subdir = study_dirs(self.config, name)
            dirs.update({k: v for k, v in (("dir", home), ("subdir", subdir)) if v is not None})
        target = dirs.get("dir", str(self.config.hydra.sweep.dir))
        local = target
        if storage.is_remote(target):
            import tempfile

            storage.check_access(target, "hydra.sweep.dir")
            self._acquire_lease(target, name)
            try:
                local = tempfile.mkdtemp(prefix="tfscale-study-")
                storage.download_dir(target, local)
                for rel in self._NOT_MIRRORED:  # another driver's leftovers, meaningless here
                    storage.remove(Path(local) / rel)
                self._lease.renew()  # a long download counts against the lease too
            except BaseException:
                self._release_lease()
                if local != target:
                    import shutil

                    shutil.rmtree(local, ignore_errors=True)
                raise
            dirs["dir"] = local  # the launcher places the trials' job directories here
        with read_write(self.config.hydra), open_dict(self.config.hydra):
            for key, value in dirs.items():
                self.config.hydra.sweep[key] = value
        # The subdir keeps its ${hydra.job.num} unquoted: each job resolves it to its own number.
        self._dir_overrides = [f"hydra.sweep.{key}={format_override_value(value) if key == 'dir' else value}"
                               for key, value in dirs.items()]
        return Path(local), (target if storage.is_remote(target) else None)

    # Not mirrored between a bucket study and a driver's scratch copy: the lease lives in the bucket only, the
    # store's POSIX lock in the scratch copy only (it would name a driver of another scratch copy).
    _NOT_MIRRORED = (LEASE_DIR, "study.db.lock")

    def _acquire_lease(self, study_uri: str, name: Optional[str]) -> None:
        from tuners.study_lock import describe_holder

        from orchestrator.launch import study_lease

        if not (self.lease_ttl_s > 0 and self.lease_ttl_s >= 4 * self.poll_interval_s):
            raise ConfigError("hydra.sweeper.lease_ttl_s", self.lease_ttl_s,
                              f"Use at least 4 x hydra.sweeper.poll_interval_s ({4 * self.poll_interval_s:g}s): the "
                              f"driver renews its lease in the bucket every lease_ttl_s/4 seconds, between polls of "
                              f"its trials. The default is 120.")
        self._lease = study_lease.acquire(study_uri, self.lease_ttl_s)
        old = self._lease.took_over
        if old is not None:
            print(f"[study] the previous driver of '{name or study_uri}' ({describe_holder(old)}) has not "
                  f"renewed its lease in {study_uri} for more than {self.lease_ttl_s:g}s; taking it over.", flush=True)

    def _release_lease(self) -> None:
        lease, self._lease = self._lease, None
        try:
            lease.release()
        except Exception as exc:  # an unreachable bucket: the lease expires after lease_ttl_s instead
            log.warning("could not release the study's lease %s (%s); another driver can take the study over "
                        "after hydra.sweeper.lease_ttl_s=%gs", lease.uri, exc, lease.ttl_s)

    def _upload(self, sweep_dir: Path, study_uri: Optional[str]) -> None:
        """Mirror the scratch copy into the bucket study, if this driver still holds its lease.

        Raises:
            LeaseLostError: another driver took the study over; nothing was uploaded.
        """
        if study_uri is None:
            return
        from orchestrator.artifacts import publish

        if self._lease is not None:
            # check()s first; renewed now, the lease cannot go stale while the upload runs (unless it runs for
            # longer than lease_ttl_s)
            self._lease.renew(force=True)
        publish.publish_tree(sweep_dir, study_uri, skip=self._not_mirrored)

    @classmethod
    def _not_mirrored(cls, rel: str) -> bool:
        return Path(rel).as_posix() in cls._NOT_MIRRORED or Path(rel).parts[:1] == (LEASE_DIR,)

    # -- before any trial ---------------------------------------------------------------------------
    def _base_overrides(self, arguments: List[str]) -> List[str]:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        for override in parser.parse_overrides(arguments):
            if override.is_sweep_override():
                raise ConfigError(override.get_key_element(), override.input_line,
                                  "A study chooses the values of its parameters; a comma list or range sweep does "
                                  "not combine with it. Give one value, or add the key to the study's parameters.")
        return list(arguments)

    def _compose_and_validate(self, overrides: List[str], trial_id: int) -> DictConfig:
        """The trial's job config, composed and validated here: the launcher runs it as it is.

        This is the one composition of a trial (the launcher gets the config, the trial process composes
        nothing). Composing in the driver lets the study record an invalid suggestion (e.g. momentum=1.0 for
        SGD) as FAILED without starting a process, stops a study whose base config is wrong before any
        compute, and tells the sweeper the trial's directory to watch while it runs.
        """
        from orchestrator.config.compose import translate_compose_error
        from orchestrator.config.validation import validate
        from orchestrator.launch.hydra_launchers import compose_job

        try:
            if self._composer is not None:  # the command line's part composed once, the trial's applied to it
                cfg = self._composer.compose(overrides, trial_id)
            else:
                cfg = compose_job(self.hydra_context, self.config, overrides, trial_id)
        except Exception as exc:  # Hydra and OmegaConf raise several unrelated types
            raise translate_compose_error(exc, overrides) from exc
        if tuple(overrides) not in self._validated:
            validate(cfg)
            self._validated.add(tuple(overrides))
        return cfg

    def _validate(self, spec: Any, base: List[str]) -> None:
        """Compose and validate the first suggestion's config, so a bad base config fails before any trial."""
        from tuners import Study

        probe = Study(spec).suggest(1)[0]
        self._compose_and_validate(base + probe.overrides(), probe.id)

    # -- the trials ---------------------------------------------------------------------------------
    def _launcher_api(self) -> Any:
        """The launcher's incremental API (tfscale's launchers), or ``launch`` one job per call (any other)."""
        incremental = getattr(self.launcher, "incremental", None)
        return incremental() if callable(incremental) else _OneJobPerCall(self.launcher)

    def _run_trials(self, study: Any, base: List[str], sweep_dir: Path,
                    study_uri: Optional[str]) -> List[Sequence[JobReturn]]:
        """Run the study's trials, starting one as soon as a slot is free; every trial's JobReturn.

        The designer is asked for one suggestion at a time, when a slot frees, and knows the trials still
        running (they are ACTIVE in the study). A trial ends completed, failed or stopped early; its slot is
        free again as soon as its process is gone.
        """
        from tuners import TunerError, progress_line, write_results

        from orchestrator.launch.hydra_launchers import JobComposer

        self._composer = JobComposer(self.hydra_context, self.config, base)
        launcher = self._launcher_api()
        slots = launcher.open(study.spec.max_parallel_trials)
        paused = True  # collections paused by `tfscale -m` until the first trials started
        active: Dict[int, _Active] = {}
        returns: List[Sequence[JobReturn]] = []
        more = True  # the study may still suggest trials
        written = True  # the results hold every trial that ended
        try:
            while True:
                while more and len(active) < slots:
                    trials = study.suggest(1)
                    if not trials:  # budget spent or search space exhausted
                        more = False
                        break
                    started = self._start_trial(study, base, trials[0], launcher)
                    if started is not None:
                        active[started.trial.id] = started
                if paused:
                    # What this driver made so far (imports, configs, the study's data) lives to its end: frozen,
                    # the garbage collections of the trials' loop skip it (a full one would walk it all).
                    collection.resume(freeze=True)
                    paused = False
                if not active:
                    break  # the caller writes the final results
                if not written:
                    # Tables, study.html and HParams after every trial (milliseconds), so the report is live and
                    # a killed study still leaves up-to-date results; written once the freed slots run again.
                    write_results(study, sweep_dir, plots=False)
                    self._upload(sweep_dir, study_uri)
                    written = True
                if self.plots and self._plotting is None:
                    # The final plots' imports, while the trials run rather than after the last one.
                    from tuners.results import preload_plotting

                    self._plotting = threading.Thread(target=preload_plotting, name="tfscale-plots", daemon=True)
                    self._plotting.start()
                # The running trials' new epochs (early stopping), once the freed slots run again.
                for trial_id, trial in active.items():
                    if not trial.stopped and self._measure(study, trial_id, trial.channel, trial.seen):
                        trial.stopped = True
                        trial.channel.request_stop()
                        launcher.stop(trial_id)
                        print(f"[study] trial {trial_id}: stopped early by the {study.spec.early_stopping.rule.name} "
                              f"rule", flush=True)
                ended = launcher.poll(self.poll_interval_s)
                if self._lease is not None:
                    self._lease.renew()  # every lease_ttl_s/4; raises once another driver took the study over
                now = time.time()
                first_error: Optional[BaseException] = None
                for job, ret in ended:
                    trial = active.pop(job.num)
                    study.trial(job.num).ended_at = now  # the store gets it with the trial's outcome
                    # Record every ended trial before reporting a study-level error, so none is re-run.
                    try:
                        self._measure(study, job.num, trial.channel, trial.seen, final=True)
                        self._record(study, trial.trial, ret, trial.channel, trial.stopped)
                    except (TfscaleError, TunerError) as exc:
                        first_error = first_error or exc
                    returns.append([ret])
                    print(progress_line(study), flush=True)
                written = written and not ended
                if first_error is not None:
                    raise first_error  # the caller writes the results
        finally:
            if paused:
                collection.resume(freeze=True)
            launcher.stop()  # what still runs (an error, Ctrl-C) stops and stays ACTIVE in the store
        return returns

    def _start_trial(self, study: Any, base: List[str], trial: Any, launcher: Any) -> Optional[_Active]:
        """Compose, validate and start ``trial``; None if its config is invalid (it is FAILED, no process)."""
        overrides = base + trial.overrides()
        try:
            cfg = self._compose_and_validate(overrides, trial.id)
        except ConfigError as exc:
            print(f"[study] trial {trial.id}: invalid config, not run: {exc}", flush=True)
            study.fail(trial.id, str(exc))
            return None
        channel = TrialChannel.of_job(cfg)
        channel.reset()  # a re-run of an interrupted trial starts from a clean directory
        job = launcher.job(overrides, trial.id, cfg)
        seen = {step for step, _ in trial.curve(study.spec.metric.tag)}
        log.info("starting trial %d", trial.id)
        launcher.start(job)
        study.mark_started(trial.id)  # its process is on its way; the store write no longer delays it
        return _Active(trial, channel, seen)

    def _measure(self, study: Any, trial_id: int, channel: TrialChannel, seen: set, final: bool = False) -> bool:
        """Feed new per-epoch values of the metric to the study; True if the trial should be stopped."""
        from tuners import TrialStatus

        if study.trial(trial_id).status is not TrialStatus.ACTIVE:
            return False
        tag = study.spec.metric.tag
        key = epoch_key(tag)
        points: List[Tuple[int, float]] = []
        if key is not None:
            for record in channel.epochs():
                if key in record and "epoch" in record:
                    points.append((int(record["epoch"]), float(record[key])))
        for record in channel.reported_metrics(tag):
            if record.get("step") is not None:
                points.append((int(record["step"]), float(record["value"])))
        fresh = []
        for step, value in sorted(points):
            if step in seen or not math.isfinite(value):
                continue
            seen.add(step)
            fresh.append((step, value))
        if not fresh:
            return False
        return bool(study.add_measurements(trial_id, fresh)) and not final  # one store write for them all

    def _record(self, study: Any, trial: Any, ret: JobReturn, channel: TrialChannel, stopped: bool) -> None:
        """Complete, fail or stop ``trial`` in the study from its job's outcome and its objectives."""
        log_path = str(channel.log_path if channel.log_path.exists() else channel.dir)
        if stopped:
            study.trial(trial.id).log_path = log_path
            study.stop(trial.id)
            return
        if ret.status is not JobStatus.COMPLETED:
            error = str(ret._return_value)  # JobReturn.return_value would re-raise it
            lines = [line for line in error.splitlines() if line.strip()]
            cause = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
            print(f"[study] trial {trial.id} failed: {cause.strip()} (log: {log_path})", flush=True)
            study.fail(trial.id, error, log_path=log_path)
            return
        metrics = ret.return_value
        if metrics is None:  # a task function that records its results without returning them
            metrics = channel.final_metrics()
        tags = [m.tag for m in study.spec.metrics]
        try:
            values = trial_objectives(metrics, channel, tags)
        except ConfigError as exc:  # an objective the search must not see: every trial would read it
            study.fail(trial.id, str(exc), log_path=log_path)
            raise
        missing = [i for i, t in enumerate(tags) if values[t] is None]
        if missing:
            tag = tags[missing[0]]
            key = f"study.metrics[{missing[0]}].tag" if study.spec.is_multi_objective else "study.metric.tag"
            found = tags_found(metrics, channel)
            message = (f"trial {trial.id} reported no metric {tag!r}. Metrics it reported: "
                       f"{', '.join(found) or 'none'}. Set {key} to one of them (e.g. accuracy = "
                       f"validation.accuracy), or report it with tuners.report_metric(value, tag={tag!r}).")
            study.fail(trial.id, message, log_path=log_path)
            if not self._tag_seen:  # no trial will report it: stop before spending the whole budget
                raise ConfigError(key, tag, message)
            return
        self._tag_seen = True
        study.complete(trial.id, values if study.spec.is_multi_objective else values[tags[0]], log_path=log_path)
