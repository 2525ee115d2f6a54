"""``deploy=tfjs``: the converter command, the missing-converter error and the published graph model."""
from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import pytest

from orchestrator import deploy
from orchestrator.config.compose import compose
from orchestrator.deploy.tfjs import TfjsTarget, conversion_args, converter_command
from orchestrator.errors import ConfigError, TaskFailedError

from quantization_testkit import run_tfscale

# Where the converter is: on PATH, named by TFJS_CONVERTER, or in the virtualenv the install hint suggests.
_VENV_CONVERTER = os.path.expanduser("~/.venvs/tfjs/bin/tensorflowjs_converter")
REAL_CONVERTER = (os.environ.get("TFJS_CONVERTER") or shutil.which("tensorflowjs_converter")
                  or shutil.which(_VENV_CONVERTER))

# Stands in for tensorflowjs_converter: records its arguments in model.json in the output directory.
FAKE_CONVERTER = """#!/bin/sh
for last; do :; done
printf '{"args": "%s"}' "$*" > "$last/model.json"
printf 'weights' > "$last/group1-shard1of1.bin"
"""


def _fake(tmp_path):
    path = tmp_path / "bin" / "fake_tfjs_converter"
    path.parent.mkdir(exist_ok=True)
    path.write_text(FAKE_CONVERTER)
    path.chmod(0o755)
    return path


def test_registered_as_a_deploy_target():
    assert isinstance(deploy.get("tfjs"), TfjsTarget)


def test_command_line():
    d = SimpleNamespace(weight_shard_size_bytes=1024, quantize="uint8", extra_args=["--skip_op_check"])
    args = conversion_args(d, "models/m/0003", "web_models/m/.tmp")
    assert args == ["--input_format=tf_saved_model", "--output_format=tfjs_graph_model", "--signature_name=serving_default",
                    "--saved_model_tags=serve", "--weight_shard_size_bytes=1024", "--quantize_uint8=*", "--skip_op_check",
                    "models/m/0003", "web_models/m/.tmp"]
    d.quantize, d.extra_args = "none", []
    assert not any(a.startswith("--quantize") for a in conversion_args(d, "a", "b"))


def test_converter_may_be_a_path_with_tilde_or_a_command_with_arguments(tmp_path, monkeypatch):
    fake = _fake(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert converter_command("~/bin/fake_tfjs_converter") == [str(fake)]
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert converter_command("fake_tfjs_converter --quiet") == [str(fake), "--quiet"]


def test_missing_converter_says_how_to_install_it(tmp_path):
    run = run_tfscale(tmp_path, "deploy=tfjs", "deploy.tfjs.converter=/nonexistent/tensorflowjs_converter")
    assert run.returncode == 2
    assert "'deploy.tfjs.converter' = '/nonexistent/tensorflowjs_converter'" in run.stderr
    assert "python -m venv ~/.venvs/tfjs && ~/.venvs/tfjs/bin/pip install tensorflowjs 'ydf<0.13'" in run.stderr
    assert "deploy.tfjs.converter=$HOME/.venvs/tfjs/bin/tensorflowjs_converter" in run.stderr
    assert not (tmp_path / "runs").exists()  # rejected before the run started


@pytest.mark.parametrize("override, key", [
    ("deploy.tfjs.quantize=int4", "deploy.tfjs.quantize"),
    ("deploy.tfjs.output_base=models", "deploy.tfjs.output_base"),
    ("export=none", "export.enabled"),
])
def test_bad_settings(tmp_path, override, key):
    # A value outside the schema's choices fails at composition, the others in the target's check: either way
    # one ConfigError naming the key, before anything runs.
    with pytest.raises(ConfigError) as err:
        cfg = compose(["deploy=tfjs", f"deploy.tfjs.converter={_fake(tmp_path)}", override])
        TfjsTarget().check(cfg)
    assert err.value.key == key


@pytest.mark.slow
def test_publishes_the_converted_version_atomically(tmp_path):
    fake = _fake(tmp_path)
    run = run_tfscale(tmp_path, "deploy=tfjs", f"deploy.tfjs.converter={fake}", "deploy.tfjs.quantize=float16",
                      "trainer.epochs=1", "trainer.verbose=0", "trainer.tensorboard=false")
    assert run.returncode == 0, run.output
    out = tmp_path / "web_models" / "digits_mlp"
    assert sorted(p.name for p in out.iterdir()) == ["0001"]  # no temporary directory left
    args = json.loads((out / "0001" / "model.json").read_text())["args"]
    assert str(tmp_path / "models" / "digits_mlp" / "0001") in args and "--quantize_float16=*" in args
    recorded = run.metrics["deploy"]
    assert recorded["path"] == "web_models/digits_mlp/0001"
    assert recorded["files"] == ["group1-shard1of1.bin", "model.json"]


def test_a_failing_converter_publishes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bin" / "failing_converter"
    bad.parent.mkdir()
    bad.write_text("#!/bin/sh\necho 'ValueError: unsupported op' >&2\nexit 1\n")
    bad.chmod(0o755)
    cfg = compose(["deploy=tfjs", f"deploy.tfjs.converter={bad}"])
    version = tmp_path / "models" / "digits_mlp" / "0001"
    version.mkdir(parents=True)
    with pytest.raises(TaskFailedError, match="unsupported op"):
        TfjsTarget().deploy(cfg, version, tmp_path)
    assert list((tmp_path / "web_models" / "digits_mlp").iterdir()) == []
    assert "unsupported op" in (tmp_path / "tfjs_converter.log").read_text()


@pytest.mark.slow
@pytest.mark.skipif(REAL_CONVERTER is None, reason="no tensorflowjs_converter here (set TFJS_CONVERTER or put it on PATH)")
def test_real_conversion_to_a_graph_model(tmp_path):
    run = run_tfscale(tmp_path, "deploy=tfjs", f"deploy.tfjs.converter={REAL_CONVERTER}", "trainer.epochs=1", "trainer.verbose=0")
    assert run.returncode == 0, run.output
    model = json.loads((tmp_path / "web_models" / "digits_mlp" / "0001" / "model.json").read_text())
    assert model["format"] == "graph-model"
    signature = model["signature"] if "signature" in model else model["userDefinedMetadata"]["signature"]
    assert "features" in json.dumps(signature)
    shards = [p for m in model["weightsManifest"] for p in m["paths"]]
    assert all((tmp_path / "web_models" / "digits_mlp" / "0001" / p).is_file() for p in shards)
