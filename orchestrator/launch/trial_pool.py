"""Warm trial processes: started once per sweep, each forking a fresh child per trial.

Started as a fresh ``python -m orchestrator.launch.job_process``, every trial pays the interpreter start, the
imports of Hydra and tfscale and, in the task process, the TensorFlow import: seconds each time. A
:class:`TrialPool` starts a *warm process* instead (``python -m orchestrator.launch.trial_pool``), once per
sweep and per distinct slot environment (slots with their own GPUs each get one). It imports Hydra and
tfscale and, for task functions marked :func:`~orchestrator.launch.job_process.warm_start`, TensorFlow and
tf_keras and the modules a trial uses
(:func:`~orchestrator.launch.warm_task.preload`: nothing lists a device or runs an op, so TensorFlow's runtime
is not initialised), freezes what the imports made (``gc.freeze``: the trials' garbage collections skip it),
then waits; the trials' data usually comes loaded from the driver in the job file, so scikit-learn is imported
only before a trial that loads its own (:data:`DATA_MODULES`). For each trial it forks a child that runs the
job file exactly as a job process does (:func:`~orchestrator.launch.job_process.run_job_file`: Hydra's
``run_job`` with the task function); that child forks its warm task process from the same imported state
(:func:`~orchestrator.launch.warm_task.fork_imported`), so the trial trains at once and is still what
``tfscale <overrides>`` runs: same task function, same run record, same task process protocol.

Guarantees:

- Every trial is a process of its own, in its own session and process group, forked from a warm process
  that never runs a job itself: a trial that crashes, is killed or is stopped leaves its warm process as it
  was. A warm process that dies anyway fails the trials it was running, and the next trial gets a new one.
- A trial gets the driver's environment of the moment it starts (plus its slot's ``CUDA_VISIBLE_DEVICES``).
  TensorFlow was imported with the warm process's environment: a trial whose topology or environment needs
  another value of a variable TensorFlow reads at import time (``warm_task.IMPORT_TIME_PREFIXES``) trains in
  a freshly spawned task process instead, as a plain ``tfscale`` run does.
- Nothing outlives the driver: warm processes are started through :mod:`orchestrator.runtime.supervisor`
  and get SIGTERM when the driver dies; a warm process stops its trials (SIGTERM, so their run records say
  how they ended, SIGKILL after the grace) before it exits, and each trial is tied to its warm process
  with ``PR_SET_PDEATHSIG``. Stopping a trial signals its whole process group.
"""
from __future__ import annotations

import argparse
import functools
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from orchestrator.runtime import collection, supervisor

# ------------------------------------------------------------------------------------- driver side
class _WarmProcess:
    """The driver's handle of one warm process: a command pipe in, a reply pipe out.

    ``exit_grace``: seconds it gets between SIGTERM and SIGKILL if it is still there when the driver's
    interpreter exits (a pool closes its processes itself, with the trials' grace).
    """

    def __init__(self, env: Dict[str, str], tensorflow: bool, grace: float, exit_grace: Optional[float] = None) -> None:
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()
        argv = [sys.executable, "-m", "orchestrator.launch.trial_pool", "--commands", str(commands_r),
                "--replies", str(replies_w), "--grace", str(grace), *(["--tensorflow"] if tensorflow else [])]
        try:
            # SIGTERM when the driver dies: the warm process stops its trials gracefully before it exits.
            self.child = supervisor.start(argv, env=env, pass_fds=(commands_r, replies_w), cwd=os.getcwd(),
                                          death_signal=signal.SIGTERM,
                                          exit_grace=grace + 1.0 if exit_grace is None else exit_grace)
        except BaseException:
            os.close(self._commands)
            os.close(self._replies)
            raise
        finally:
            os.close(commands_r)
            os.close(replies_w)
        self.key = (tuple(sorted(env.items())), bool(tensorflow))
        self.grace = float(grace)
        self.running: set = set()  # job numbers running in it
        self.alive = True
        self._closed = False

    def fileno(self) -> int:
        return self._replies

    def send(self, message: Tuple[Any, ...]) -> bool:
        """Send a command; False if the warm process is gone."""
        from orchestrator.launch.warm_task import _send

        if not self.alive:
            return False
        try:
            _send(self._commands, message)
            return True
        except OSError:
            return False

    def receive(self) -> Optional[Tuple[Any, ...]]:
        """The next reply (call when the pipe is readable); None once the warm process is gone."""
        from orchestrator.launch.warm_task import _recv

        try:
            return _recv(self._replies)
        except (OSError, EOFError, ValueError):
            return None

    def close(self, grace: float) -> None:
        """Tell the warm process to quit (it stops its trials within ``grace``) and reap it (idempotent)."""
        self.alive = False
        if self._closed:
            return
        self._closed = True
        os.close(self._commands)  # end of file on its command pipe: it stops its trials and quits
        if self.running:
            try:
                self.child.wait(grace + 2.0)
            except supervisor.TimeoutExpired:
                pass
        self.child.stop(0.0, sig=signal.SIGKILL)  # no trial of it is left (or it took too long): nothing to lose
        os.close(self._replies)


_prestarted: Optional[_WarmProcess] = None


def prestart(env: Dict[str, str], *, tensorflow: bool, grace: float) -> None:
    """Start a warm process now, before the sweep's pool exists, for the pool to adopt when its slots have this
    environment: its imports then overlap the driver's own preparation (composing, validating, opening the
    study). Until adopted it is killed outright when the driver exits, so an early error still ends at once.
    A pool whose trials get another ``grace`` adopts it all the same (it is told the pool's)."""
    global _prestarted
    if _prestarted is None:
        _prestarted = _WarmProcess(env, tensorflow, grace, exit_grace=0.0)


def discard_prestarted() -> None:
    """Stop the prestarted warm process if no pool adopted it (a launcher that does not use it)."""
    global _prestarted
    process, _prestarted = _prestarted, None
    if process is not None:
        process.close(0.0)


def _adopt(key: Tuple[Any, ...], grace: float) -> Optional[_WarmProcess]:
    global _prestarted
    process = _prestarted
    if process is None or process.key != key or not process.alive:
        return None
    _prestarted = None
    if process.grace != grace and not process.send(("grace", grace)):
        process.close(0.0)
        return None
    process.grace = grace
    process.child.exit_grace = grace + 1.0
    return process


class TrialPool:
    """Warm processes for the slots of a sweep; :meth:`run` starts a trial on a slot, :meth:`wait` reports the
    trials that ended.

    Slots whose environments are the same (no GPUs, or the same ones) share one warm process, which forks
    each of their trials: TensorFlow is imported once per distinct environment, not once per slot.

    Args:
        slot_envs: the environment of each slot (the driver's, plus the slot's GPUs).
        tensorflow: import TensorFlow in the warm processes (task functions marked ``warm_start``).
        grace: seconds a stopped trial gets between SIGTERM and SIGKILL.
    """

    def __init__(self, slot_envs: Sequence[Dict[str, str]], *, tensorflow: bool, grace: float) -> None:
        self.tensorflow = tensorflow
        self.grace = float(grace)
        self._envs = [dict(env) for env in slot_envs]
        self._processes: Dict[Tuple[Tuple[str, str], ...], _WarmProcess] = {}
        self._where: Dict[int, _WarmProcess] = {}  # running job number -> the warm process that forked it
        for slot in range(len(self._envs)):  # their imports run while the driver prepares the first trials
            self._warm(slot)
        discard_prestarted()  # started for slots that turned out to need another environment

    def _warm(self, slot: int) -> _WarmProcess:
        key = tuple(sorted(self._envs[slot].items()))
        process = self._processes.get(key)
        if process is None or not process.alive:
            if process is not None:
                process.close(0.0)
            process = _adopt((key, self.tensorflow), self.grace)
            if process is None:
                process = _WarmProcess(self._envs[slot], self.tensorflow, self.grace)
            self._processes[key] = process
        return process

    def run(self, slot: int, num: int, job_file: Path, env: Dict[str, str], log_path: Path, *,
            data_given: bool = False) -> None:
        """Start job ``num`` (its job file written) on ``slot``'s warm process, output into ``log_path``.

        ``data_given``: the job file holds the job's data (the trial loads none, see :data:`DATA_MODULES`)."""
        command = ("run", num, str(job_file), dict(env), str(log_path), bool(data_given))
        process = self._warm(slot)
        if not process.send(command):  # it died since its last trial: a new one
            process.alive = False
            process = self._warm(slot)
            if not process.send(command):
                raise RuntimeError(f"the warm trial process of slot {slot} did not accept job {num}")
        process.running.add(num)
        self._where[num] = process

    def stop(self, num: int) -> None:
        """Stop job ``num``: SIGTERM to its process group, SIGKILL after the grace; :meth:`wait` reports its end."""
        process = self._where.get(num)
        if process is not None:
            process.send(("stop", num, self.grace))

    def wait(self, timeout: float) -> List[Tuple[int, Optional[int]]]:
        """``(job number, exit code)`` of the jobs that ended, waiting up to ``timeout`` s for one.

        The exit code is None when the job's warm process died under it.
        """
        processes = [p for p in self._processes.values() if p.running]
        if not processes:
            if timeout > 0:
                time.sleep(timeout)
            return []
        try:
            readable, _, _ = select.select(processes, [], [], max(0.0, timeout))
        except InterruptedError:
            readable = []
        ended: List[Tuple[int, Optional[int]]] = []
        for process in readable:
            reply = process.receive()
            if reply is None:  # the warm process died: its trials died with it
                ended += [(num, None) for num in sorted(process.running)]
                for num in process.running:
                    self._where.pop(num, None)
                process.running.clear()
                process.alive = False
                continue
            if reply[0] == "exited":
                _, num, code = reply
                process.running.discard(num)
                self._where.pop(num, None)
                ended.append((num, code))
        return ended

    def close(self) -> None:
        """Stop every running trial and every warm process (trials get the grace to record how they ended)."""
        for process in self._processes.values():
            process.close(self.grace if process.running else 0.0)
        self._processes.clear()
        self._where.clear()


# -------------------------------------------------------------------------------- warm process side
def _capture_import_output() -> Tuple[Any, List[Tuple[int, int]]]:
    """Send fds 1 and 2 to a temporary file while the training stack is imported (see :func:`_restore_output`)."""
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    sink = tempfile.TemporaryFile()
    saved = []
    for fd in (1, 2):
        try:
            saved.append((fd, os.dup(fd)))
        except OSError:
            continue
        os.dup2(sink.fileno(), fd)
    return sink, saved


def _restore_output(sink: Any, saved: List[Tuple[int, int]]) -> bytes:
    """Put fds 1 and 2 back; what the import printed, which each trial's log starts with."""
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, old in saved:
        os.dup2(old, fd)
        os.close(old)
    sink.seek(0)
    data = sink.read()
    sink.close()
    return data


#: What a tfscale trial imports besides TensorFlow (:func:`warm_task.preload`): imported once per slot, not per
#: trial. Module imports only; none of them initialises TensorFlow's runtime.
TRIAL_MODULES = (
    "orchestrator.app.cli",  # tfscale's task function
    "orchestrator.config.validation",
    "orchestrator.artifacts.run_record",
    "orchestrator.training.topology",
    "orchestrator.training.streaming",
    "orchestrator.config.streams",
    "orchestrator.artifacts.quantization",
    "orchestrator.deploy",
    "strategies",
    "strategies.tf_config",
)
#: What a trial that loads its own data imports (the digits and diabetes data, the three-way split): imported
#: before the first such trial is forked. A study's driver usually hands its trials their data
#: (:func:`warm_task.study_data`): then nothing waits for these.
DATA_MODULES = ("sklearn.datasets", "sklearn.model_selection")


def _import_quietly(modules: Sequence[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # an extra that is not installed: the trial reports it if it needs it
            pass


def _warm_config_parser() -> None:
    """Parse the interpolations a job config holds once, here, so each trial inherits the parser's warm caches.

    OmegaConf's grammar (ANTLR) builds its lexer and parser tables lazily, on the first strings it meets: done
    in every forked trial, that costs tenths of a second of each trial's start.
    """
    from omegaconf import grammar_parser

    for text in ("${a}", "${a.b.c}", "x_${a}_y", "${a}/${b.c}", "${oc.env:HOME,null}", "${hydra:runtime.output_dir}",
                 "${now:%Y-%m-%d_%H-%M-%S}", "trial_${hydra.job.num}", "${oc.select:a.b,1.0e-3}", "[a, 1]", "{a: 1}"):
        try:
            grammar_parser.parse(text)
        except Exception:  # a form this OmegaConf does not know: nothing to warm
            pass


def _trial_main(job_file: str, env: Dict[str, str], log_path: str, import_output: bytes,
                import_env: Optional[Dict[str, str]], close_fds: Sequence[int]) -> int:
    """Body of a trial forked by a warm process: output into its log, the driver's environment, run the job."""
    for fd in close_fds:  # the warm process's pipes: its end must be seen as its end by the driver
        try:
            os.close(fd)
        except OSError:
            pass
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    view = memoryview(import_output)
    while view:  # the log reads as a job process's would, TensorFlow's import lines included
        view = view[os.write(1, view):]
    os.environ.clear()
    os.environ.update(env)
    if import_env is not None:
        from orchestrator.launch import warm_task

        if warm_task.enabled(env):
            warm_task.fork_imported(import_env)
    from orchestrator.launch.job_process import run_job_file

    return run_job_file(Path(job_file))


def warm_process_main(commands: int, replies: int, tensorflow: bool, grace: float) -> int:
    """Body of a warm process: import, then fork a trial per ``run`` command until the command pipe ends.

    ``grace``: seconds its trials get between SIGTERM and SIGKILL when it quits.
    """
    from orchestrator.launch import warm_task

    supervisor.install_signal_handlers()
    import_env = dict(os.environ)
    sink, saved = _capture_import_output()
    collection.pause()  # see orchestrator.runtime.collection: the imports take a quarter less time
    try:
        import cloudpickle  # noqa: F401  (what every job file needs)
        import hydra.core.utils  # noqa: F401

        import orchestrator.launch.job_process  # noqa: F401
        _warm_config_parser()
        if tensorflow:
            warm_task.preload()
            _import_quietly(TRIAL_MODULES)
            try:
                from orchestrator.training.task import experiment_schema

                experiment_schema()  # each trial types its config with a copy of it
            except Exception:  # the trial meets the same error itself, and reports it
                pass
    finally:
        import_output = _restore_output(sink, saved)
    # Trials are forked from here. Frozen, what the imports made is left alone by the trials' garbage
    # collections: a full one walks TensorFlow's ~400k objects (a quarter of a second) and, touching each,
    # makes the trial copy pages it would otherwise share with this process.
    collection.resume(freeze=True)
    trials: Dict[int, supervisor.Child] = {}
    deadlines: Dict[int, float] = {}
    waits: Dict[int, int] = {}  # job number -> a pidfd that becomes readable when the trial exits
    try:
        while True:
            timeout: Optional[float] = None
            if deadlines:
                timeout = max(0.0, min(deadlines.values()) - time.monotonic())
            if len(waits) < len(trials):  # no pidfd on this system: look every 50 ms
                timeout = 0.05 if timeout is None else min(timeout, 0.05)
            try:
                readable, _, _ = select.select([commands, *waits.values()], [], [], timeout)
            except InterruptedError:
                readable = []
            for num, trial in list(trials.items()):
                if trial.poll() is not None:
                    del trials[num]
                    deadlines.pop(num, None)
                    fd = waits.pop(num, None)
                    if fd is not None:
                        os.close(fd)
                    warm_task._send(replies, ("exited", num, trial.returncode))
                elif num in deadlines and time.monotonic() >= deadlines[num]:
                    trial.send(signal.SIGKILL)
                    del deadlines[num]
            if commands not in readable:
                continue
            message = warm_task._recv(commands)
            if message is None:  # the driver closed the pipe (or died): stop the trials and quit
                break
            if message[0] == "run":
                _, num, job_file, env, log_path, data_given = message
                if tensorflow and not data_given and not all(name in sys.modules for name in DATA_MODULES):
                    with collection.paused(freeze=True):
                        _import_quietly(DATA_MODULES)
                main = functools.partial(_trial_main, job_file, env, log_path, import_output,
                                         import_env if tensorflow else None,
                                         [commands, replies, *waits.values()])
                trials[num] = trial = supervisor.fork_child(main)
                exited = supervisor.pidfd(trial.pid)
                if exited is not None:  # None: Linux before 5.3, or not Linux
                    waits[num] = exited
            elif message[0] == "grace":  # adopted by a pool whose trials get another grace
                grace = float(message[1])
            elif message[0] == "stop":
                _, num, stop_grace = message
                trial = trials.get(num)
                if trial is not None and num not in deadlines:
                    trial.send(signal.SIGTERM)
                    deadlines[num] = time.monotonic() + float(stop_grace)
    except KeyboardInterrupt:  # SIGTERM: the driver is going away
        pass
    finally:
        for trial in trials.values():
            trial.send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for trial in trials.values():
            try:
                trial.wait(max(0.0, deadline - time.monotonic()))
            except supervisor.TimeoutExpired:
                trial.stop(0.0, sig=signal.SIGKILL)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.launch.trial_pool", description=__doc__)
    parser.add_argument("--commands", type=int, required=True, help="read end of the driver's command pipe")
    parser.add_argument("--replies", type=int, required=True, help="write end of the reply pipe")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds a trial gets between SIGTERM and SIGKILL")
    parser.add_argument("--tensorflow", action="store_true", help="import TensorFlow before the first trial")
    args = parser.parse_args(argv)
    try:
        code = warm_process_main(args.commands, args.replies, args.tensorflow, args.grace)
    except KeyboardInterrupt as exc:  # SIGTERM while it was still importing: it had no trial yet
        code = supervisor.exit_code(exc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter tear-down of a process holding TensorFlow


if __name__ == "__main__":
    sys.exit(main())
