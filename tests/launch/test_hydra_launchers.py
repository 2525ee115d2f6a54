"""tfscale's Hydra launchers pass Hydra's own launcher test suites, and stop a job when its channel asks.

Hydra's suites (``hydra.test_utils.launcher_common_tests``) run real sweeps of Hydra's test apps through
``hydra/launcher=tfscale_processes`` and ``hydra/launcher=tfscale_ray``: each job a fresh process running the
task function, its JobReturn (config, overrides, directory, return value) checked against what Hydra's basic
launcher gives. The integration suites start real ``@hydra.main`` scripts with ``-m``.
"""
from __future__ import annotations

import copy

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, IntegrationTestSuite, LauncherTestSuite

from orchestrator.errors import TaskFailedError
from orchestrator.launch.hydra_launchers import TrialStoppedError
from orchestrator.launch.trial_channel import TrialChannel

RAY_CPUS = "hydra.launcher.num_cpus=2"


def _integration_cfg(launcher: str) -> dict:
    return {"defaults": [{"override hydra/launcher": launcher}, {"override hydra/hydra_logging": "hydra_debug"},
                         {"override hydra/job_logging": "disabled"}]}


def _pristine_singletons():
    from hydra.core.singleton import Singleton

    return copy.deepcopy(Singleton.get_state())


# Taken when this module is imported (at collection, before any test ran).
_PRISTINE_SINGLETONS = _pristine_singletons()


@pytest.fixture(autouse=True)
def pristine_hydra_singletons():
    """Hydra's suites expect Hydra's process state as a fresh process has it (version base 1.1 semantics: a job
    changes into its directory); other tests in this process composed tfscale's config with version_base="1.3",
    which Hydra keeps in process-wide singletons."""
    from hydra.core.singleton import Singleton

    Singleton.set_state(copy.deepcopy(_PRISTINE_SINGLETONS))
    yield


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the in-process Ray tests of this module (``ray.init`` takes seconds)."""
    ray = pytest.importorskip("ray")
    yield
    if ray.is_initialized():
        ray.shutdown()


# ------------------------------------------------------------------------------------------ processes
class TestProcessesLauncher(LauncherTestSuite):
    """Hydra's launcher suite on ``hydra/launcher=tfscale_processes``."""

    @pytest.fixture
    def launcher_name(self) -> str:
        return "tfscale_processes"

    @pytest.fixture
    def overrides(self) -> list:
        return []  # a fresh list: the suite appends to it


class TestProcessesLauncherBatches(BatchedSweeperTestSuite):
    """Hydra's batched-sweep suite: 6 jobs in 3 launches, job numbers and directories continuing across them.

    It sweeps a grid with Hydra's basic sweeper (``max_batch_size=2``): tfscale's study sweeper runs only a
    ``study:`` node, which this suite's apps do not have; its own batches are covered by tests/studies.
    """

    @pytest.fixture
    def launcher_name(self) -> str:
        return "tfscale_processes"

    @pytest.fixture
    def overrides(self) -> list:
        return ["hydra.sweeper.max_batch_size=2"]


@pytest.mark.slow
class TestProcessesLauncherIntegration(IntegrationTestSuite):
    """Hydra's integration suite: ``@hydra.main`` scripts run with ``-m hydra/launcher=tfscale_processes``."""

    @pytest.fixture
    def task_launcher_cfg(self) -> dict:
        return _integration_cfg("tfscale_processes")

    @pytest.fixture
    def extra_flags(self) -> list:
        return ["-m"]


# ------------------------------------------------------------------------------------------------ Ray
@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
class TestRayLauncher(LauncherTestSuite):
    """Hydra's launcher suite on ``hydra/launcher=tfscale_ray``, on a local 2-CPU Ray."""

    @pytest.fixture
    def launcher_name(self) -> str:
        return "tfscale_ray"

    @pytest.fixture
    def overrides(self) -> list:
        return [RAY_CPUS]


@pytest.mark.slow
class TestRayLauncherIntegration(IntegrationTestSuite):
    """Hydra's integration suite with ``-m hydra/launcher=tfscale_ray`` (each script starts its own Ray)."""

    @pytest.fixture
    def task_launcher_cfg(self) -> dict:
        return _integration_cfg("tfscale_ray")

    @pytest.fixture
    def extra_flags(self) -> list:
        return ["-m", RAY_CPUS]

    # Task names and sweep directories are composed by the launchers' shared base class before a job reaches
    # Ray, and the processes suite above runs every case of them; each case here starts a Ray of its own
    # (about 10 s). The cases that depend on where the job runs — its working and original directories on
    # a Ray worker — stay.
    test_custom_task_name = None
    test_custom_sweeper_run_workdir = None


# ------------------------------------------------------------------------------------ stop and errors
def _sweep(hydra_sweep_runner: Any, tmp_path: Path, launcher: list, task_function: Any) -> Any:
    return hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module",
                              task_function=task_function, config_path="configs", config_name="compose.yaml",
                              overrides=launcher, temp_dir=tmp_path / "sweep")


def _stop_when_started(job_dir: Path) -> threading.Thread:
    """Ask the job of ``job_dir`` to stop once Hydra wrote its files there (the task function is running)."""
    def watch() -> None:
        deadline = time.monotonic() + 60
        while not (job_dir / ".hydra" / "config.yaml").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        TrialChannel(job_dir).request_stop()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# Task functions are made inside functions so that cloudpickle sends them by value, as it does a script's.
def _sleep_forever() -> Any:
    def task(cfg: Any) -> Any:
        time.sleep(300)
        return "finished"

    return task


LAUNCHERS = [
    pytest.param(["hydra/launcher=tfscale_processes"], id="processes"),
    pytest.param(["hydra/launcher=tfscale_ray", RAY_CPUS], id="ray", marks=pytest.mark.slow),
]


@pytest.mark.usefixtures("hydra_restore_singletons")
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_stop_request_stops_the_running_job(launcher, hydra_sweep_runner, tmp_path, request):
    if "hydra/launcher=tfscale_ray" in launcher:
        request.getfixturevalue("ray_session")
    start = time.monotonic()
    _stop_when_started(tmp_path / "sweep" / "0")
    # Hydra's basic sweeper raises the first failed job's error once the batch returned.
    with pytest.raises(TrialStoppedError, match="job 0 was stopped early"):
        with _sweep(hydra_sweep_runner, tmp_path, launcher + ["hydra.launcher.stop_timeout_s=2"], _sleep_forever()):
            pass
    assert time.monotonic() - start < 60


def _raise_config_error() -> Any:
    def task(cfg: Any) -> Any:
        from orchestrator.errors import ConfigError

        raise ConfigError("model.units", -1, "Use a positive number.")

    return task


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_a_failing_task_returns_its_error_and_logs_it(hydra_sweep_runner, tmp_path):
    with pytest.raises(TaskFailedError, match=r"ConfigError: Invalid config 'model.units' = -1"):
        with _sweep(hydra_sweep_runner, tmp_path, ["hydra/launcher=tfscale_processes"], _raise_config_error()):
            pass
    log = TrialChannel(tmp_path / "sweep" / "0").log_path.read_text()
    assert "Traceback" in log and "Use a positive number." in log


def test_info_plugins_lists_each_tfscale_plugin_once(tmp_path):
    from tfscale_testing import run_tfscale

    result = run_tfscale(["--info", "plugins"], tmp_path, timeout=120)
    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    for name in ("StudySweeper", "ProcessesLauncher", "RayLauncher"):
        assert sum(name in line for line in lines) == 1, (name, result.stdout)
