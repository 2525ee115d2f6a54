"""The TF_CONFIG builder and cluster validation, without TensorFlow; bad specs through the real CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config.compose import compose
from orchestrator.errors import ConfigError
from orchestrator.config.validation import validate
from strategies import tf_config
from strategies.multi_worker import TPUStrategy


def _cfg(*overrides):
    return compose(list(overrides))


def _configs(cfg, port=3000):
    tasks = tf_config.plan_tasks(cfg.cluster)
    ports = iter(range(port, port + 100))
    addresses = tf_config.assign_addresses(tasks, lambda t: f"127.0.0.1:{next(ports)}")
    return {name: json.loads(raw) for name, raw in tf_config.tf_configs(tasks, addresses).items()}


def test_ps_cluster_with_evaluator_keeps_the_evaluator_out_of_the_cluster_dict():
    confs = _configs(_cfg("cluster=ps_2x1_eval", "strategy=parameter_server", "backend=processes"))
    assert set(confs) == {"chief:0", "worker:0", "worker:1", "ps:0", "evaluator:0"}
    cluster = confs["chief:0"]["cluster"]
    assert sorted(cluster) == ["chief", "ps", "worker"] and len(cluster["worker"]) == 2
    assert confs["evaluator:0"] == {"cluster": cluster, "task": {"type": "evaluator", "index": 0}}
    assert confs["worker:1"]["task"] == {"type": "worker", "index": 1}
    every = [a for addrs in cluster.values() for a in addrs]
    assert len(every) == len(set(every)) == 4


def test_plain_tensorflow_spec_is_used_as_is():
    spec = '{worker:["10.0.0.1:2222","10.0.0.2:2222"],ps:["10.0.0.1:2221"],chief:["10.0.0.3:2222"]}'
    cfg = _cfg("cluster=ps_2x1", f"+cluster.spec={spec}", "cluster.chief.count=0", "cluster.worker.count=0",
               "cluster.ps.count=0", "strategy=parameter_server", "backend=ray")
    validate(cfg)
    confs = _configs(cfg)
    assert confs["ps:0"]["cluster"] == {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"], "ps": ["10.0.0.1:2221"],
                                        "chief": ["10.0.0.3:2222"]}


def test_port_zero_in_a_spec_means_a_free_port_at_launch():
    cfg = _cfg("cluster=spec_workers_2", "strategy=multi_worker_mirrored", "backend=processes")
    validate(cfg)
    confs = _configs(cfg, port=4000)
    assert confs["worker:0"]["cluster"]["worker"] == ["127.0.0.1:4000", "127.0.0.1:4001"]


@pytest.mark.parametrize("overrides, key, fix", [
    (["cluster=workers_2", "strategy=multi_worker_mirrored", "+cluster.spec={worker:[\"127.0.0.1:2222\",\"127.0.0.1:2222\"]}",
      "cluster.worker.count=0"], "cluster.spec", "own host:port"),
    (["cluster=chief_workers_2", "cluster.chief.count=2", "strategy=multi_worker_mirrored"], "cluster.chief.count", "at most one chief"),
    (["cluster=workers_2", "strategy=parameter_server"], "cluster.ps.count", "ps_2x1"),
    (["cluster=ps_2x1", "strategy=multi_worker_mirrored"], "cluster.ps.count", "parameter_server"),
    (["cluster=workers_2", "strategy=mirrored", "topology=cpu_x2"], "strategy.name", "multi_worker_mirrored"),
    (["cluster=ps_2x1", "cluster.chief.count=0", "strategy=parameter_server"], "cluster.chief.count", "coordinator"),
    (["cluster=workers_2", "strategy=multi_worker_mirrored", "+cluster.spec={worker:[\"127.0.0.1:1\"],evaluator:[\"127.0.0.1:2\"]}",
      "cluster.worker.count=0"], "cluster.spec", "evaluator.count=1"),
    (["cluster=spec_workers_2", "strategy=multi_worker_mirrored", "cluster.spec={worker:[\"localhost\"]}"], "cluster.spec.worker[0]", "host:port"),
    (["cluster=spec_workers_2", "strategy=multi_worker_mirrored", "cluster.spec={worker:[\"10.1.1.1:2222\"]}"], "cluster.spec", "backend=ray"),
    (["cluster=workers_2", "strategy=multi_worker_mirrored", "cluster.evaluator.count=2"], "cluster.evaluator.count", "0 or 1"),
    (["cluster=none", "strategy=default"], "cluster", "cluster=workers_2"),
    (["cluster=workers_2", "strategy=multi_worker_mirrored", "backend.max_restarts=2"], "backend.max_restarts", "backup_and_restore"),
])
def test_bad_clusters_are_config_errors_naming_field_and_fix(overrides, key, fix):
    with pytest.raises(ConfigError) as err:
        validate(_cfg("backend=processes", *overrides))
    assert err.value.key == key
    assert fix in str(err.value)


def test_ray_settings_are_checked():
    with pytest.raises(ConfigError, match="STRICT_SPREAD"):
        validate(_cfg("backend=ray", "cluster=workers_2", "strategy=multi_worker_mirrored", "backend.placement_strategy=SPREAD_OUT"))
    with pytest.raises(ConfigError, match="ray://host:port"):
        validate(_cfg("backend=ray", "cluster=workers_2", "strategy=multi_worker_mirrored", "backend.ray_address=http://x"))


def test_role_topology_is_merged_and_checked():
    cfg = _cfg("backend=processes", "cluster=ps_2x1", "strategy=parameter_server", "+cluster.ps.topology={cpu_devices:2}")
    validate(cfg)
    assert tf_config.role_topology(cfg, "ps").cpu_devices == 2 and tf_config.role_topology(cfg, "chief").cpu_devices == 1
    with pytest.raises(ConfigError) as err:
        validate(_cfg("backend=processes", "cluster=ps_2x1", "strategy=parameter_server", "+cluster.ps.topology={cpu_devices:0}"))
    assert err.value.key == "topology.cpu_devices"


def test_evaluator_is_counted_from_its_tf_config():
    env = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "evaluator", "index": 0}})}
    assert tf_config.cluster_from_env(env) == {"worker": 2, "evaluator": 1}


def test_tpu_resolver_arguments_come_from_config():
    cfg = _cfg("strategy=tpu", "strategy.tpu=grpc://10.2.3.4:8470", "strategy.tpu_zone=us-central1-b", "strategy.tpu_project=p")
    validate(cfg)
    assert TPUStrategy().resolver_kwargs(cfg) == {"tpu": "grpc://10.2.3.4:8470", "zone": "us-central1-b", "project": "p"}
    assert TPUStrategy().resolver_kwargs(_cfg("strategy=tpu")) == {"tpu": "local"}
    with pytest.raises(ConfigError, match="grpc://host:port"):
        validate(_cfg("strategy=tpu", "strategy.tpu=grpc://nohost"))


def _run_cli(args, cwd):
    probe = ("import runpy, sys, atexit; sys.argv=['tfscale', *sys.argv[1:]]; "
             "atexit.register(lambda: print('TF_IMPORTED=' + str('tensorflow' in sys.modules), file=sys.stderr)); "
             "runpy.run_module('orchestrator.app.cli', run_name='__main__')")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    return proc, time.perf_counter() - start


@pytest.mark.parametrize("args, field, fix", [
    (["cluster=ps_2x1", "strategy=multi_worker_mirrored"], "cluster.ps.count", "strategy=parameter_server"),
    (["cluster=chief_workers_2", "cluster.chief.count=2"], "cluster.chief.count", "at most one chief"),
    (["cluster=spec_workers_2", "cluster.spec={worker:[\"127.0.0.1:2222\",\"127.0.0.1:2222\"]}"], "cluster.spec", "own host:port"),
    (["cluster=workers_2", "strategy=parameter_server"], "cluster.ps.count", "ps_2x1"),
])
def test_cli_rejects_bad_cluster_before_tensorflow(tmp_path, args, field, fix):
    base = ["backend=processes", "strategy=multi_worker_mirrored"]
    proc, seconds = _run_cli(base + args, tmp_path)
    assert proc.returncode != 0
    assert field in proc.stderr and fix in proc.stderr, proc.stderr
    assert "TF_IMPORTED=False" in proc.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()
    assert seconds < 5  # generous on a loaded 2-core machine; the in-process timing is asserted below


def test_cluster_validation_is_fast_and_imports_no_tensorflow():
    code = ("import sys, time; from orchestrator.app.cli import preflight; t=time.perf_counter()\n"
            "try:\n    preflight(['backend=ray', 'cluster=ps_2x1', 'strategy=multi_worker_mirrored'])\n"
            "except Exception as e:\n    print(type(e).__name__, round(time.perf_counter()-t, 3), 'tensorflow' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    assert out[0] == "ConfigError" and float(out[1]) < 1.0 and out[2:] == ["False", "False"], out
