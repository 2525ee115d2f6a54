"""Every invalid config is refused before compute: non-zero exit, under a second, key + value + fix named,
no run directory and no model version written, no TensorFlow imported."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tfscale_testing import run_tfscale

# (overrides, key that must be named, value that must be shown, a word of the fix)
INVALID = [
    (["model=cnnn"], "model", "cnnn", "cnn"),
    (["trainer.epohcs=5"], "trainer.epohcs", "5", "epochs"),
    (["epochs=5"], "epochs", "5", "Valid keys"),
    (["trainer.epochs=abc"], "trainer.epochs", "abc", "type"),
    (["trainer.epochs=-1"], "trainer.epochs", "-1", "at least 1"),
    (["topology=cpu_x2", "strategy=mirrored", "trainer.batch_size=33"], "trainer.batch_size", "33", "divisible by 2"),
    (["strategy=mirrored"], "topology.cpu_devices", "1", "cpu_x2"),
    (["strategy=parameter_server"], "cluster", "none", "cluster=ps_2x1"),
    (["strategy=multi_worker_mirrored"], "cluster", "none", "cluster=workers_2"),
    (["topology.gpu_memory_limit_mb=1024"], "topology.gpu_memory_limit_mb", "1024", "on_missing_gpu=cpu_fallback"),
    (["topology=gpu_split2"], "topology.gpu_memory_limit_mb", "2048", "topology=cpu"),
    (["topology.gpus=[3]"], "topology.gpus", "[3]", "topology=cpu"),
    (["data=files", "data.path=missing.npz"], "data.path", "missing.npz", "No such file"),
    (["data.validation_split=0.6", "data.test_split=0.5"], "data.validation_split", "0.6", "below 1"),
    (["model.optimizer.learning_rate=0"], "model.optimizer.learning_rate", "0", "> 0"),
    (["model.optimizer.name=adamm"], "model.optimizer.name", "adamm", "adam"),
    (["trainer.mixed_precision=mixed_float16"], "trainer.mixed_precision", "mixed_float16", "mixed_bfloat16"),
    (["topology=cpu_x2", "strategy=mirrored", "strategy.cross_device_ops=nccl"], "strategy.cross_device_ops", "nccl", "hierarchical_copy"),
    (["strategy=one_device", "strategy.device=/gpu:0"], "strategy.device", "/gpu:0", "topology"),
    (["backend=nowhere"], "backend", "nowhere", "local"),
    (["trainer.verbose=5"], "trainer.verbose", "5", "0 (silent)"),
    (["export.model_name=a/b"], "export.model_name", "a/b", "no slashes"),
    (["model.builder=not_a_builder"], "model.builder", "not_a_builder", "package.module:function"),
    (["data.limit=3"], "data.limit", "3", "at least 10"),
    # closed choices fail at composition, listing the valid values
    (["strategy=foo"], "strategy", "foo", "central_storage, default, mirrored"),
    (["strategy.name=foo"], "strategy.name", "foo", "one_device, mirrored, central_storage, multi_worker_mirrored"),
    (["strategy.name=mirored"], "strategy.name", "mirored", "Did you mean strategy.name=mirrored?"),
    (["quantization.mode=foo"], "quantization.mode", "foo", "none, dynamic, float16, int8, qat"),
    (["backend.name=nowhere"], "backend.name", "nowhere", "local, processes, ray, vertex"),
    (["topology.on_missing_gpu=ignore"], "topology.on_missing_gpu", "ignore", "error, cpu_fallback"),
    # no TPU device on this machine and no TPU address
    (["strategy=tpu"], "strategy.tpu", "local", "strategy.tpu=grpc://"),
    # names that become directories, and directories that cannot be created
    (["experiment.name=../x"], "experiment.name", "../x", "experiment.name=x"),
    (["model.name=a/b"], "model.name", "a/b", "model.name=a_b"),
    ([f"experiment.name={'n' * 300}"], "experiment.name", "n" * 300, "use a shorter experiment.name"),
    (["runs_dir=/proc/tfscale_runs"], "runs_dir", "/proc/tfscale_runs", "choose a directory you can write"),
    (["runs_dir=/dev/null"], "runs_dir", "/dev/null", "is not a directory"),
    (["export.model_base=/proc/tfscale_models"], "export.model_base", "/proc/tfscale_models", "choose a directory you can write"),
    # Hydra's grammar reads non-ASCII only quoted
    (["experiment.name=é"], "experiment.name", "é", 'experiment.name="é"'),
    # clusters: counts set to 0, the README's spec form on the default cluster=none and backend=local
    (["cluster=workers_2", "cluster.worker.count=0", "backend=processes", "strategy=multi_worker_mirrored"],
     "cluster.worker.count", "0", "cluster.worker.count=2"),
    (['cluster.spec={worker: ["127.0.0.1:0", "127.0.0.1:0"]}'], "backend", "local", "backend=processes strategy=multi_worker_mirrored"),
    # targets outside the allowed modules, refused before anything is imported
    (["model.layers.0._target_=os.system"], "model.layers[0]._target_", "os.system", "model.allowed_modules"),
    (["+model.layers.1.kernel_regularizer={_target_: shutil.rmtree, path: x}"], "model.layers[1].kernel_regularizer._target_",
     "shutil.rmtree", "model.allow_any_target=true"),
    (["model.builder=os:system"], "model.builder", "os:system", "model.allowed_modules"),
]


@pytest.fixture(scope="module", autouse=True)
def _warm(tmp_path_factory):
    # The first run compiles bytecode; timing starts from a warm interpreter as a user's second run would.
    run_tfscale(["--cfg", "job"], tmp_path_factory.mktemp("warm"))


@pytest.mark.parametrize("overrides,key,value,fix", INVALID, ids=[" ".join(c[0]) for c in INVALID])
def test_invalid_config_is_refused(tfscale, overrides, key, value, fix):
    result = tfscale(*overrides)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert message.startswith("tfscale: error:"), result.output
    assert len(message.splitlines()) == 1, message
    assert f"'{key}'" in message, message
    assert value in message, message
    assert fix in message, message
    assert result.seconds < 1.0, f"took {result.seconds:.2f}s"
    assert not (tfscale.cwd / "models").exists()
    assert not (tfscale.cwd / "runs").exists()


def test_the_readme_cluster_spec_form_composes_on_cluster_none():
    from orchestrator.config.compose import compose
    from orchestrator.config.validation import validate

    cfg = compose(['cluster.spec={worker: ["127.0.0.1:0", "127.0.0.1:0"]}', "backend=processes", "strategy=multi_worker_mirrored"])
    assert cfg.cluster.name == "none" and list(cfg.cluster.spec.worker) == ["127.0.0.1:0", "127.0.0.1:0"]
    assert validate(cfg)["replicas"] == 2


def test_distinct_invalid_cases():
    assert len({tuple(c[0]) for c in INVALID}) >= 15


@pytest.mark.parametrize("overrides", [c[0] for c in INVALID[:12]])
def test_validation_imports_no_tensorflow(overrides):
    code = (
        "import sys\n"
        "from orchestrator.app.cli import preflight\n"
        "from orchestrator.errors import ConfigError\n"
        f"try:\n    preflight({overrides!r})\nexcept ConfigError:\n    pass\nelse:\n    sys.exit('accepted')\n"
        "heavy = [m for m in ('tensorflow', 'tf_keras', 'ray', 'google.cloud.aiplatform') if m in sys.modules]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_and_cfg_job_without_tensorflow(tmp_path):
    for args in (["--help"], ["--cfg", "job"]):
        code = ("import sys\nfrom orchestrator.app.cli import main\n"
                f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
                "sys.exit('tensorflow imported' if 'tensorflow' in sys.modules else 0)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "trainer" in proc.stdout


@pytest.mark.parametrize("name", ["abc\n", ".hidden", "_x", "a/b", "..", "a..b", "a b", "n" * 129])
def test_a_name_that_becomes_a_directory_is_one_plain_name(name):
    from orchestrator.config.paths import check_name
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match="one directory name") as caught:
        check_name("study.name", name, "A study name", "runs/studies/<name>", max_length=128)
    assert "study.name=" in str(caught.value)
    assert check_name("study.name", "lr-sweep_2.b", "A study name", "runs/studies/<name>", max_length=128) == "lr-sweep_2.b"
