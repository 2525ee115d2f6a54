"""The pre-flight and allowed targets: config mistakes that only TensorFlow can see fail before the first
epoch, in one line naming the layer or op and the fix; a ``_target_`` outside the allowed modules is refused
before anything is imported or called."""
from __future__ import annotations

import pytest

from tfscale_testing import run_tfscale, tfscale_env

QUICK = ("trainer=quick", "trainer.tensorboard=false")


def _refused_before_training(run, *words):
    """Exit 2, one error line holding ``words``, no epoch logged, no version published."""
    errors = [line for line in run.stderr.splitlines() if line.startswith("tfscale: error:")]
    assert run.returncode == 2, run.output
    assert len(errors) == 1 and "Traceback" not in run.output, run.output
    for word in words:
        assert word in errors[0], errors[0]
    assert not list(run.cwd.glob("runs/*/*/epochs.jsonl")), "an epoch ran"
    assert not (run.cwd / "models").exists(), "a version was published"
    print(f"time to error: {run.seconds:.1f}s")  # <= 15 s on the 2-core machine; not asserted (shared CPUs)


def test_misspelt_layer_argument_suggests_the_right_one(tfscale):
    run = tfscale("+model.layers.1.activaton=relu", *QUICK)
    _refused_before_training(run, "'model.layers[1].activaton'", "Dense takes no argument 'activaton'",
                             "Did you mean 'activation'?")


def test_wrong_typed_layer_argument_names_the_expected_type(tfscale):
    # tf_keras would take the string as true and train a model with a bias.
    run = tfscale("+model.layers.1.use_bias=maybe", *QUICK)
    _refused_before_training(run, "'model.layers[1].use_bias' = 'maybe'", "takes true or false")


def test_int8_of_an_op_without_int8_kernel_names_layer_and_op(tfscale):
    run = tfscale("quantization=int8", "model.layers=[{_target_: tf_keras.layers.experimental.RandomFourierFeatures, output_dim: 16}]",
                  *QUICK)
    _refused_before_training(run, "'model.layers[0]'", "RandomFourierFeatures", "op COS", "no int8 kernel",
                             "quantization=dynamic or float16")


def test_tfjs_ops_the_converter_lacks_fail_before_training(tfscale):
    fake = tfscale.cwd / "tfjs_converter"
    fake.write_text("#!/bin/sh\necho 'ValueError: Unsupported Ops in the model before optimization' >&2\n"
                    "echo 'Erfinv, Cos' >&2\nexit 1\n")
    fake.chmod(0o755)
    run = tfscale("deploy=tfjs", f"deploy.tfjs.converter={fake}", *QUICK)
    _refused_before_training(run, "'deploy.target' = 'tfjs'", "Erfinv, Cos", "deploy=none")


def test_os_system_target_is_refused_without_being_called(tfscale):
    run = tfscale("model.layers.0._target_=os.system", '+model.layers.0._args_=["touch called"]', *QUICK)
    assert run.returncode == 2, run.output
    assert "'model.layers[0]._target_' = 'os.system'" in run.stderr and "model.allowed_modules" in run.stderr
    assert not (tfscale.cwd / "called").exists()
    assert not (tfscale.cwd / "runs").exists()  # refused at validation, before the run directory


def test_a_target_of_a_user_module_runs_nothing_unless_allowed(tfscale):
    (tfscale.cwd / "mine.py").write_text("open('called', 'w').close()\n\ndef Layer(**kw):\n    open('called', 'w').close()\n")
    env = tfscale_env(PYTHONPATH=str(tfscale.cwd))
    run = run_tfscale(["model.layers.0._target_=mine.Layer", *QUICK], tfscale.cwd, env=env)
    assert run.returncode == 2 and "'model.layers[0]._target_' = 'mine.Layer'" in run.stderr, run.output
    assert not (tfscale.cwd / "called").exists()  # not even imported
    # Listed in model.allowed_modules it passes validation (the next check, trainer.epochs, fails instead).
    run = run_tfscale(["model.layers.0._target_=mine.Layer", "model.allowed_modules=[tf_keras,mine]", "trainer.epochs=0"],
                      tfscale.cwd, env=env)
    assert "'trainer.epochs'" in run.stderr, run.output
    assert not (tfscale.cwd / "called").exists()


def test_the_package_of_a_config_directory_is_allowed(tfscale):
    pkg = tfscale.cwd / "team"
    (pkg / "conf").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    run = tfscale("-cd", str(pkg / "conf"), "model.layers.0._target_=team.layers.Mine", "trainer.epochs=0")
    assert "'trainer.epochs'" in run.stderr, run.output  # the target passed; the next check failed
    run = tfscale("model.layers.0._target_=team.layers.Mine", "trainer.epochs=0")
    assert "'model.layers[0]._target_'" in run.stderr, run.output


def test_a_path_through_a_stdlib_module_is_refused_in_the_task_too():
    from orchestrator.errors import ConfigError
    from orchestrator.training.models import _locate

    assert _locate("tf_keras.layers.Dense", ["tf_keras"]).__name__ == "Dense"
    with pytest.raises(ConfigError, match="outside the allowed modules"):
        _locate("tf_keras.src.backend.os.system", ["tf_keras"], "model.layers[0]._target_")


def test_argument_checks_follow_the_layer_signature():
    from orchestrator.errors import ConfigError
    from orchestrator.runtime.tf_env import import_keras
    from orchestrator.training.preflight import accepted_arguments, check_arguments, explain_failure

    keras = import_keras()
    accepted, is_open = accepted_arguments(keras.layers.Conv2D, keras)
    assert not is_open and {"filters", "kernel_size", "padding", "name", "input_shape"} <= set(accepted)
    check_arguments("k", keras.layers.Conv2D, {"filters": 4, "kernel_size": [3, 3], "strides": 1, "padding": "same",
                                               "kernel_regularizer": {"_target_": "tf_keras.regularizers.L2"}}, keras)
    with pytest.raises(ConfigError, match="takes an integer or a list of integers"):
        check_arguments("k", keras.layers.Conv2D, {"filters": 4, "kernel_size": "3"}, keras)
    with pytest.raises(ConfigError, match="a number"):
        check_arguments("k", keras.layers.Dropout, {"rate": "0.5"}, keras)
    try:
        keras.layers.Conv2D(filters=4, kernel_size=3, paddding="same")
    except TypeError as exc:
        err = explain_failure("k", keras.layers.Conv2D, {"filters": 4, "kernel_size": 3, "paddding": "same"}, exc, keras)
    assert err.key == "k.paddding" and "Did you mean 'padding'?" in str(err)


def test_converter_failures_are_one_line_naming_the_op(tmp_path):
    from orchestrator.artifacts.quantization import UnsupportedOpsError, convert
    from orchestrator.artifacts.export import save_model
    from orchestrator.runtime.tf_env import import_keras, import_tensorflow

    tf, keras = import_tensorflow(), import_keras()
    inputs = keras.Input((8,))
    x = keras.layers.LSTM(4)(keras.layers.Reshape((2, 4))(inputs))
    save_model(tf, keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="probabilities")(x), name="m"),
               tmp_path / "sm", (8,), "features", "probabilities")
    with pytest.raises(UnsupportedOpsError) as err:
        convert(tmp_path / "sm", "dynamic")
    message = str(err.value)
    assert "\n" not in message and "TensorListReserve" in message and "m/lstm" in message and "unroll: true" in message
