"""Conformance suite for strategies, shipped so every implementation (here or in plugins) runs it.

A test module subclasses :class:`BasicStrategyTestCase`, sets ``name`` and fills in the context hooks
(``valid_contexts``, ``invalid_contexts``); pytest collects the inherited ``test_*`` methods. ``check`` and
``replicas`` are asserted in the test process, as validation calls them: fast, without TensorFlow. ``build``
and ``fit_input`` run where a task would run them: in fresh processes (``python -m strategies.testing``)
whose logical CPU devices are set before TensorFlow initialises, one per task of a ``TF_CONFIG`` cluster on
127.0.0.1 for a strategy that needs one; each training task then fits a tiny tf_keras model for one epoch.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import strategies
from orchestrator.errors import ConfigError, TaskFailedError, TfscaleError
from strategies.base import FitData, FitInput, Strategy, StrategyContext
from strategies.tf_config import TRAINING_ROLES, role_counts, tf_config_json

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
#: CPU seconds validation may spend on ``check`` + ``replicas`` (config errors answer in well under a second;
#: CPU time, so that other work on a busy machine does not count).
CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Invalid:
    """A context ``check`` must reject with a ConfigError naming ``key`` and showing ``value``."""

    ctx: StrategyContext
    key: str
    value: Any


@dataclass
class BuildReport:
    """What one task process of :func:`build_in_fresh_processes` reported."""

    task: str
    serving: bool  # a task of ``server_roles``: it served until the training tasks were done
    returncode: int  # -SIGKILL where it was still running when they were
    output: Dict[str, Any] = field(default_factory=dict)
    log: str = ""

    @property
    def error(self) -> Optional[str]:
        """Class name of the TfscaleError ``build`` raised, if it raised one."""
        return self.output.get("error")


class BasicStrategyTestCase:
    """Behaviour every strategy must show; subclasses set ``name`` and ``valid_contexts()``."""

    #: The name the strategy is registered under (``strategy.name``).
    name: str = ""
    build_timeout_s: float = 180.0
    #: Starts one task process: ``start(argv, env=..., stdout=..., stderr=...)`` returning a handle with ``poll()``
    #: and ``stop(timeout, sig=...)``. The application supplies its process supervisor (a staticmethod).
    start_process: Optional[Callable[..., Any]] = None

    # ------------------------------------------------------------------------------------- hooks
    def valid_contexts(self) -> List[StrategyContext]:
        """Contexts the project's validation accepts for this strategy; the first one is built."""
        raise AssertionError("subclasses must define valid_contexts()")

    def invalid_contexts(self) -> List[Invalid]:
        """Contexts ``check`` must reject; none for a strategy that runs anywhere."""
        return []

    def expected_replicas(self, ctx: StrategyContext) -> Optional[int]:
        """The replica count a user expects for ``ctx`` (None: no expectation beyond the rules)."""
        return None

    def missing_hardware(self) -> Optional[str]:
        """Why ``build`` cannot succeed on this machine (e.g. no TPU), or None.

        Where something is missing, ``build`` must fail with a ConfigError or TaskFailedError that says so,
        not with a TensorFlow traceback.
        """
        return None

    def build_cluster(self, ctx: StrategyContext) -> Dict[str, int]:
        """Tasks per role the build runs as a TF_CONFIG cluster on 127.0.0.1 ({} = one lone process)."""
        if not self.strategy().needs_cluster:
            return {}
        return {role: n for role, n in role_counts(ctx.cfg.cluster).items() if role in TRAINING_ROLES}

    # ------------------------------------------------------------------------------------ helpers
    def strategy(self) -> Strategy:
        return strategies.get(self.name)

    # -------------------------------------------------------------------------------------- tests
    def test_registered_under_its_name_with_consistent_cluster_properties(self):
        strategy = self.strategy()
        assert isinstance(strategy, Strategy)
        cls = type(strategy)
        assert cls.name == self.name
        assert isinstance(cls.needs_cluster, bool) and isinstance(cls.variables_on_servers, bool)
        assert isinstance(cls.server_roles, tuple) and set(cls.server_roles) <= set(TRAINING_ROLES) - {"chief"}
        # Serving tasks only exist in a cluster, and variables can only live on tasks that serve.
        assert cls.needs_cluster or not cls.server_roles
        assert cls.server_roles or not cls.variables_on_servers

    def test_check_accepts_valid_contexts_fast_and_without_tensorflow(self):
        contexts = self.valid_contexts()
        assert contexts, "valid_contexts() must give at least one context"
        had_tf = "tensorflow" in sys.modules
        for ctx in contexts:
            start = time.process_time()
            assert self.strategy().check(ctx) is None
            self.strategy().replicas(ctx)
            assert time.process_time() - start < CHECK_SECONDS
        assert had_tf or "tensorflow" not in sys.modules, "check/replicas imported TensorFlow"

    def test_check_rejects_invalid_contexts_naming_key_and_value(self):
        cases = self.invalid_contexts()
        if not cases:
            pytest.skip(f"strategy={self.name} runs in every context; there is nothing to reject")
        had_tf = "tensorflow" in sys.modules
        for case in cases:
            start = time.process_time()
            with pytest.raises(ConfigError) as err:
                self.strategy().check(case.ctx)
            assert time.process_time() - start < CHECK_SECONDS
            message = str(err.value)
            assert err.value.key == case.key, message
            assert f"'{case.key}'" in message and repr(case.value) in message, message
            assert err.value.fix.strip() and "\n" not in message, message
        assert had_tf or "tensorflow" not in sys.modules, "check imported TensorFlow"

    def test_replicas_is_a_positive_count_that_divides_the_accepted_batch(self):
        for ctx in self.valid_contexts():
            replicas = self.strategy().replicas(ctx)
            assert isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 1, replicas
            assert self.strategy().replicas(ctx) == replicas  # stateless: same answer every time
            expected = self.expected_replicas(ctx)
            if expected is not None:
                assert replicas == expected
            batch = getattr(getattr(ctx.cfg, "trainer", None), "batch_size", None)
            if batch is not None:
                assert batch % replicas == 0, f"trainer.batch_size={batch} is accepted but not divisible by {replicas} replicas"

    def _starter(self) -> Callable[..., Any]:
        starter = type(self).start_process
        if starter is None:
            raise AssertionError("set start_process to the application's process starter, "
                                 "e.g. staticmethod(orchestrator.runtime.supervisor.start)")
        return starter

    @pytest.mark.slow
    def test_build_in_fresh_processes_gives_the_replicas_and_fits(self):
        ctx = self.valid_contexts()[0]
        strategy = self.strategy()
        reports = build_in_fresh_processes(strategy, ctx, self.build_cluster(ctx), start=self._starter(),
                                           timeout=self.build_timeout_s)
        missing = self.missing_hardware()
        for report in reports:
            if report.serving:
                # Still serving when training ended (killed then), not exited on its own.
                assert report.returncode == -signal.SIGKILL, f"{report.task} exited {report.returncode}: {report.log[-3000:]}"
                continue
            if missing is not None:
                # The user sees one tfscale error saying what is missing, not a TensorFlow traceback.
                assert report.error in (ConfigError.__name__, TaskFailedError.__name__), f"{missing}: {report.log[-3000:]}"
                assert "Traceback" not in report.log and "\n" not in report.output["message"], report.log[-3000:]
                continue
            assert report.returncode == 0 and not report.error, f"{report.task}: {report.log[-3000:]}"
            out = report.output
            assert out["is_tf_strategy"], out
            assert out["num_replicas_in_sync"] == strategy.replicas(ctx) == out["replicas"], out
            # fit_input gave model.fit what it needs: one epoch of a tiny model ran to a finite loss.
            assert out["epochs"] == 1 and math.isfinite(out["loss"]), out


# ------------------------------------------------------------------------------------ fresh builds
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_in_fresh_processes(strategy: Strategy, ctx: StrategyContext, cluster: Dict[str, int], *,
                             start: Callable[..., Any], timeout: float = 180.0) -> List[BuildReport]:
    """Build ``strategy`` for ``ctx`` the way a task does, in fresh processes; one report per task.

    ``cluster`` gives the tasks per role of a TF_CONFIG cluster on 127.0.0.1 ({} = one process without
    TF_CONFIG). Every task applies ``ctx.devices.logical_cpus`` logical CPUs before TensorFlow initialises,
    then builds; a training task fits a tiny model for one epoch, a task of ``strategy.server_roles`` serves
    until the training tasks are done. All processes are gone when this returns.

    ``start(argv, env=..., stdout=..., stderr=...)`` starts one task and returns a handle with ``poll()`` and
    ``stop(timeout)`` — the application's process supervisor (``orchestrator.runtime.supervisor.start``): the
    strategies library starts no process of its own.
    """
    server_roles = strategy.server_roles
    addresses = {role: [f"127.0.0.1:{_free_port()}" for _ in range(cluster[role])]
                 for role in TRAINING_ROLES if cluster.get(role)}
    tasks = [(role, i) for role in ("ps", "chief", "worker") for i in range(cluster.get(role, 0))] or [(None, 0)]
    procs: List[Tuple[str, bool, Any, Path, Path]] = []
    with tempfile.TemporaryDirectory(prefix="tfscale-strategy-build-") as tmp:
        try:
            for role, index in tasks:
                task = f"{role}:{index}" if role else "task"
                serve = role in server_roles
                out, log = Path(tmp, f"{task}.json".replace(":", "-")), Path(tmp, f"{task}.log".replace(":", "-"))
                payload = Path(tmp, f"{task}.pkl".replace(":", "-"))
                payload.write_bytes(pickle.dumps({"strategy": strategy, "ctx": ctx, "serve": serve, "out": str(out)}))
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
                env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
                env.pop("TF_CONFIG", None)
                if role:
                    env["TF_CONFIG"] = tf_config_json(addresses, role, index)
                with open(log, "wb") as log_file:
                    proc = start([sys.executable, "-m", "strategies.testing", str(payload)], env=env, stdout=log_file,
                                 stderr=log_file)
                procs.append((task, serve, proc, out, log))
            deadline = time.monotonic() + timeout
            builders = [p for p in procs if not p[1]]
            while any(p[2].poll() is None for p in builders) and time.monotonic() < deadline:
                if any(p[2].poll() not in (None, 0) for p in procs):
                    break  # a task failed: the others would wait for it until the deadline
                time.sleep(0.1)
        finally:
            for _, _, proc, _, _ in procs:
                proc.stop(0.0, sig=signal.SIGKILL)
        return [BuildReport(task, serve, proc.returncode, json.loads(out.read_text()) if out.exists() else {},
                            log.read_text(errors="replace")) for task, serve, proc, out, log in procs]


def _child(payload_path: str) -> int:
    """One task: apply the logical CPUs, build, then serve or fit one epoch and report what was built."""
    payload = pickle.loads(Path(payload_path).read_bytes())
    ctx: StrategyContext = payload["ctx"]
    strategy: Strategy = payload["strategy"]
    out = Path(payload["out"])
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tfscale trains with tf_keras
    if not ctx.devices.logical_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # the planned topology has no GPU: TensorFlow must not see one
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    cpus = tf.config.list_physical_devices("CPU")
    if ctx.devices.logical_cpus > 1:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * ctx.devices.logical_cpus)
    try:
        built = strategy.build(ctx, tf)
    except TfscaleError as exc:
        out.write_text(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        print(f"tfscale: error: {exc}", flush=True)
        return 3
    if payload["serve"]:
        if not isinstance(built, tf.distribute.Server):
            print(f"build returned {type(built).__name__} on a server task, not a tf.distribute.Server", flush=True)
            return 4
        built.join()
        return 0
    report = {"is_tf_strategy": isinstance(built, tf.distribute.Strategy), "class": type(built).__name__,
              "num_replicas_in_sync": int(built.num_replicas_in_sync), "replicas": strategy.replicas(ctx)}
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8), dtype=np.float32), rng.integers(0, 2, 64)
    batch = 8 * int(built.num_replicas_in_sync)
    data = FitData(train=tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=0).batch(batch), validation=None,
                   x=x, y=y, batch_size=batch, seed=0, shuffle_buffer=64, steps_per_epoch=None)
    fit = strategy.fit_input(data, tf, keras)
    if not isinstance(fit, FitInput):
        print(f"fit_input returned {type(fit).__name__}, not a FitInput", flush=True)
        return 4
    keras.utils.set_random_seed(0)
    with built.scope():
        model = keras.Sequential([keras.layers.Input((8,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit(fit.x, epochs=1, steps_per_epoch=fit.steps_per_epoch, validation_data=fit.validation_data, verbose=0)
    report.update(epochs=len(history.history["loss"]), loss=float(history.history["loss"][-1]))
    out.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    code = _child(sys.argv[1])
    sys.stdout.flush()
    # os._exit: a process holding a collective or coordination runtime may block in interpreter teardown.
    os._exit(code)
