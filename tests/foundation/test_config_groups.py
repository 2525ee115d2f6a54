"""Every option of every config group composes against its schema; the valid ones validate."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.config.compose import CONF_DIR, compose
from orchestrator.errors import ConfigError
from orchestrator.config.validation import validate
from strategies.devices import local_tpu_devices

# Options that need hardware or a cluster this machine's default config does not have; they must fail
# validation with a ConfigError (never silently run), and compose cleanly.
NEEDS_MORE = {
    ("topology", "gpu_split2"), ("topology", "gpu_growth"),
    ("strategy", "mirrored"), ("strategy", "multi_worker_mirrored"), ("strategy", "parameter_server"),
    ("data", "files"),
    ("data", "tfrecord"), ("data", "csv_shards"),  # stream shards: need data.train/validation or data.spec
    ("study", "digits_shards"),  # needs the shards `tfscale data convert --digits` writes
    ("backend", "vertex"), ("deploy", "vertex"),  # need a Google Cloud project, region and bucket
    ("backend", "processes"), ("backend", "ray"),  # launch clusters: need a cluster option too
    ("data", "diabetes"), ("model", "mlp_regressor"),  # regression: together (experiment=diabetes_regression)
}
# A cluster needs a backend that launches its tasks (backend=local would train alone and ignore them).
NEEDS_MORE |= {("cluster", c) for c in ("chief_workers_2", "ps_2x1", "ps_2x1_eval", "spec_workers_2", "workers_2")}
if not local_tpu_devices():
    NEEDS_MORE.add(("strategy", "tpu"))  # strategy.tpu=local needs a Cloud TPU VM
if not shutil.which("tensorflowjs_converter"):
    NEEDS_MORE.add(("deploy", "tfjs"))  # the converter lives in its own environment


def _options():
    for group_dir in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        for option in sorted(group_dir.glob("*.yaml")):
            yield group_dir.name, option.stem


OPTIONS = list(_options())


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "files"):
        overrides.append("data.path=somewhere.npz")
    cfg = compose(overrides)
    if (group, option) in NEEDS_MORE:
        with pytest.raises(ConfigError):
            validate(cfg)
    else:
        validate(cfg)


def test_groups_have_options():
    groups = {g for g, _ in OPTIONS}
    assert {"data", "model", "topology", "strategy", "trainer", "export", "backend", "experiment"} <= groups


def test_default_config_is_typed():
    cfg = compose([])
    assert cfg.model.name == "mlp" and cfg.trainer.epochs >= 1
    assert cfg.export.model_name == "digits_mlp"
    facts = validate(cfg)
    assert facts["replicas"] == 1


def test_cpu_x2_mirrored_has_two_replicas():
    facts = validate(compose(["topology=cpu_x2", "strategy=mirrored"]))
    assert facts["replicas"] == 2
    assert facts["devices"].accelerator_devices == ["/cpu:0", "/cpu:1"]


def test_strategy_choices_are_the_registered_strategies():
    import strategies
    from orchestrator.config.schema import StrategyName

    assert StrategyName.values() == list(strategies.STRATEGIES)


def test_choices_are_plain_strings_in_everything_written(tmp_path: Path):
    import json

    import yaml
    from omegaconf import OmegaConf

    cfg = compose(["strategy=mirrored", "quantization=int8", "topology=cpu_x2"])
    assert cfg.strategy.name == "mirrored" and f"{cfg.quantization.mode}" == "int8"
    assert cfg.export.model_name == "digits_mlp"  # interpolation of a choice gives its value
    text = OmegaConf.to_yaml(cfg, resolve=True)  # --cfg job, config.resolved.yaml
    assert "  name: mirrored\n" in text and "  mode: int8\n" in text
    plain = yaml.safe_load(text)
    assert OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) == plain
    assert json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True)))["strategy"]["name"] == "mirrored"
    (tmp_path / "config.resolved.yaml").write_text(text)  # a task process reads the record back typed
    from orchestrator.training.task import load_run_config

    assert load_run_config(tmp_path).strategy.name == "mirrored"


def test_experiment_preset_overrides_groups():
    cfg = compose(["experiment=digits_cnn_mirrored"])
    assert cfg.model.name == "cnn" and cfg.strategy.name == "mirrored" and cfg.topology.cpu_devices == 2
    assert validate(cfg)["replicas"] == 2


def test_user_config_dir_adds_options(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.yaml").write_text(
        "name: tiny\nlayers:\n  - _target_: tf_keras.layers.Dense\n    units: 8\n")
    cfg = compose(["model=tiny"], config_dir=str(tmp_path))
    assert cfg.model.layers[0].units == 8
