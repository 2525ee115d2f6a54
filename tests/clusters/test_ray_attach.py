"""Attaching to a Ray cluster tfscale did not start: what is checked and sent before any node is involved."""
from __future__ import annotations

import socket
import subprocess

import pytest

from clusters import cluster_testing as ct
from orchestrator.errors import ConfigError

MWMS = ["backend=ray", "cluster=workers_2", "strategy=multi_worker_mirrored"]


def tfscale(cwd, *args, **env):
    return subprocess.run([*ct.tfscale_argv(), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in ct.env().items() if not k.startswith("RAY_")}, **env})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_listens_is_one_line_within_seconds(tmp_path):
    port = closed_port()
    proc = tfscale(tmp_path, *MWMS, RAY_ADDRESS=f"127.0.0.1:{port}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("tfscale: error:")]
    assert f"'RAY_ADDRESS' = '127.0.0.1:{port}'" in line and "ray start --head" in line


def test_a_malformed_address_is_refused_before_anything_runs(tmp_path):
    proc = tfscale(tmp_path, *MWMS, RAY_ADDRESS="head.example.org")
    assert proc.returncode == 2 and "Invalid config 'RAY_ADDRESS' = 'head.example.org'" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_runtime_env_ships_the_packages_and_where_storage_is(monkeypatch):
    from orchestrator.launch import ray_session

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/home/me/key.json")
    env = ray_session.project_runtime_env(["tensorflow==2.21.*"], {"TF_CPP_MIN_LOG_LEVEL": "2"}, hydra_plugins=True)
    assert [p.rsplit("/", 1)[1] for p in env["py_modules"]] == ["orchestrator", "strategies", "tuners", "conf", "hydra_plugins"]
    assert env["pip"] == ["tensorflow==2.21.*"] and "__pycache__" in env["excludes"]
    # Where storage is travels; credentials do not (a path on this machine means nothing on a node).
    assert env["env_vars"] == {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443", "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_the_token_is_found_where_ray_looks_for_it(monkeypatch, tmp_path):
    from orchestrator.launch import ray_session

    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    assert not ray_session.token_available()
    (tmp_path / "token").write_text("abc\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert ray_session.token_available()


@pytest.mark.parametrize("override, key", [
    ("cluster.chief.cpus=2", "cluster.chief.cpus"),
    ("cluster.chief.cpus=1", "cluster"),
])
def test_tasks_that_do_not_fit_the_cluster_are_a_config_error(override, key):
    from orchestrator.config.compose import compose
    from orchestrator.launch.ray_cluster import _check_fits
    from strategies import tf_config

    cfg = compose(["backend=ray", "cluster=ps_2x1", "strategy=parameter_server", override])
    nodes = [{"node_id": "a", "ip": "10.0.0.1", "cpus": 1.0, "gpus": 0.0}, {"node_id": "b", "ip": "10.0.0.2", "cpus": 1.0, "gpus": 0.0}]
    with pytest.raises(ConfigError) as err:
        _check_fits(cfg, tf_config.plan_tasks(cfg.cluster), nodes)
    assert err.value.key == key
    ok = compose(["backend=ray", "cluster=ps_2x1", "strategy=parameter_server"])  # 4 x 0.5 CPU: fits 2 x 1
    _check_fits(ok, tf_config.plan_tasks(ok.cluster), nodes)
