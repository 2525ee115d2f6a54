"""TFLite conversion of the trained model, evaluated against the float model and gated.

Modes (``quantization.mode``):

- ``none`` — no conversion.
- ``dynamic`` — dynamic-range quantization: int8 weights, float activations.
- ``float16`` — float16 weights.
- ``int8`` — full integer quantization of weights and activations, calibrated on
  ``quantization.calibration_batches`` batches of ``quantization.calibration_batch_size`` examples drawn
  from the experiment's own training split; ``quantization.int8_io`` makes the input and output tensors
  int8 too (otherwise they stay float and the model quantizes at its edges).
- ``qat`` — quantization-aware training: the tf_keras model is wrapped with the model optimization
  toolkit before it is compiled and trained, then converted to full int8 like ``int8``. The wrapping is
  what ``quantize_model`` does (annotate every layer, ``quantize_apply``), except that the Rescaling
  layer tfscale puts first, which the toolkit's registry lacks, gets an output quantizer.

Dense kernels are quantized per tensor unless ``quantization.dense_per_channel``: per-channel
parameters would make a small MLP's int8 file a sixth larger.

Every converted model runs in the LiteRT interpreter (one thread) on the test split (the validation split
with ``quantization.evaluation_split=validation``, as in studies that tune for it) next to a float32
TFLite conversion of the same SavedModel, which is the size and latency baseline; the accuracy baseline
is the float model itself (the SavedModel's ``serving_default``; for ``qat`` that is the trained model
with its fake-quantization ops in float). The report goes to ``metrics.json`` under ``quantization``
and is printed as a table. ``quantization.max_accuracy_drop`` (accuracy on a 0..1 scale) is the gate.
What "right" means follows ``model.head``: the argmax class for softmax, each label over 0.5 for sigmoid
(accuracy over all labels); a regression model (``linear``) is measured by its mean absolute error instead,
reported as ``mae_increase`` (the error the conversion adds, in the targets' units) and gated by
``quantization.max_mae_increase``.

Where files go. The converted file is published beside the SavedModel version, with its number and
the mode in its name::

    <model_base>/<model_name>/0001/               the SavedModel version
    <model_base>/<model_name>/0001.int8.tflite    its int8 conversion

A model server loads only directories with a numeric name, so the file is invisible to it. The file is
written to a hidden temporary file in the same directory and renamed into place. The float32 baseline
and the converted file are also kept in the run directory under ``quantization/``.

Conversion and the gate run *before* the version is published (from a staging SavedModel in the run
directory, saved with the same signature): a run that fails its gate leaves no new version and no
``.tflite`` file in the model repository.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from orchestrator.artifacts import publish, storage
from orchestrator.errors import ConfigError, GateError

if TYPE_CHECKING:  # numpy is imported where it runs: validation must stay light
    import numpy as np

    from orchestrator.config.schema import ExperimentConfig

log = logging.getLogger(__name__)

from orchestrator.config.heads import PredictionKind, prediction_kind
from orchestrator.config.quantization import CALIBRATED_MODES
from orchestrator.config.schema import QuantizationMode, QuantizationSplit


# ------------------------------------------------------------------------------------------ training
def _import_tfmot():
    from orchestrator.runtime.tf_env import prepare_environment

    prepare_environment()  # the toolkit imports TensorFlow; the legacy-Keras switch must be set first
    import tensorflow_model_optimization as tfmot

    return tfmot


def prepare_model(cfg: ExperimentConfig, model: Any, x_train: np.ndarray) -> Any:
    """Get the freshly built model ready for this quantization mode; call inside the strategy's scope.

    Checks that the training split yields calibration batches (int8, qat) and, for ``qat``, returns the
    model wrapped by ``tfmot.quantization.keras`` and compiled like the original. Raises ConfigError
    before any training is spent.
    """
    q = cfg.quantization
    if q.mode in CALIBRATED_MODES and len(x_train) == 0:
        raise ConfigError("quantization.mode", q.mode, "The training split is empty, so there is nothing to calibrate "
                          "int8 activation ranges on. Give data with training rows, or use quantization=dynamic or float16.")
    if q.mode != QuantizationMode.qat:
        return model
    from orchestrator.runtime.tf_env import import_keras

    keras = import_keras()
    tfmot = _import_tfmot()
    qk = tfmot.quantization.keras
    custom_objects = _qat_custom_objects()
    Default8BitOutputQuantizeConfig = custom_objects["Default8BitOutputQuantizeConfig"]

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.Rescaling):
            # The registry has no entry for Rescaling; quantizing its output keeps the graph integer-only.
            return qk.quantize_annotate_layer(layer.__class__.from_config(layer.get_config()), Default8BitOutputQuantizeConfig())
        return qk.quantize_annotate_layer(layer.__class__.from_config(layer.get_config()))

    try:
        annotated = keras.models.clone_model(model, clone_function=annotate)
        with qk.quantize_scope(custom_objects):
            wrapped = qk.quantize_apply(annotated)
    except (RuntimeError, ValueError, TypeError) as exc:
        key = "model.builder" if cfg.model.builder else "model.layers"
        raise ConfigError(key, cfg.model.builder or "[...]",
                          f"quantization=qat could not wrap this model with tensorflow-model-optimization ({exc}). "
                          "Use layers its default 8-bit scheme supports, or post-training quantization: quantization=int8.") from exc
    opt = model.optimizer
    wrapped.compile(optimizer=opt.__class__.from_config(opt.get_config()), loss=model.loss, metrics=list(cfg.model.metrics),
                    steps_per_execution=int(cfg.strategy.steps_per_execution))
    log.info("quantization-aware training: %d layers wrapped", len(wrapped.layers))
    return wrapped


def _qat_custom_objects() -> Dict[str, Any]:
    # Not re-exported by the toolkit's public API; the path is stable across the 0.7-0.8 releases tfscale pins.
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs import (
        Default8BitOutputQuantizeConfig,
    )

    return {"Default8BitOutputQuantizeConfig": Default8BitOutputQuantizeConfig}


def local_copy(model: Any, mode: str) -> Any:
    """The trained model with plain single-process variables (same architecture, same weights).

    Saving a model trained under MultiWorkerMirroredStrategy is a collective operation every worker must
    join, and the other workers join only the export of the version. The staging SavedModel the chief
    converts before publishing is therefore saved from this copy.
    """
    from orchestrator.runtime.tf_env import import_keras

    keras = import_keras()
    if mode == "qat":
        with _import_tfmot().quantization.keras.quantize_scope(_qat_custom_objects()):
            copy = keras.models.clone_model(model)
    else:
        copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


# ------------------------------------------------------------------------------------------ conversion
def calibration_batches(x_train: np.ndarray, batches: int, batch_size: int, seed: int = 0) -> List[np.ndarray]:
    """Up to ``batches`` batches of training rows (a seeded sample, so reruns calibrate alike)."""
    import numpy as np
    n = min(len(x_train), batches * batch_size)
    idx = np.random.default_rng(seed).permutation(len(x_train))[:n]
    rows = x_train[idx].astype("float32")
    return [rows[i:i + batch_size] for i in range(0, n, batch_size)]


class UnsupportedOpsError(ConfigError):
    """The TFLite converter cannot convert (or, for int8/qat, cannot quantize) some ops of the model.

    ``ops``: ``(op, where)`` pairs, ``where`` being the tensor or call-site name the converter reports
    (``mlp/lstm/...``: the layer is a component of it). Nothing was published.
    """

    def __init__(self, mode: str, ops: Sequence[Tuple[str, str]], problem: str, fix: str):
        self.mode = mode
        self.ops = list(ops)
        self.problem_text = problem
        super().__init__("quantization.mode", mode, fix, problem=problem)


#: Ops of a recurrent layer's loop over time steps, which TFLite converts only as a static (unrolled) loop.
_TENSOR_LIST_OPS = ("TensorList", "While")


def _op_fix(mode: str, op: str) -> str:
    if any(op.startswith(p) for p in _TENSOR_LIST_OPS):
        return ("It comes from a recurrent layer's loop over time steps: set unroll: true on that layer (a static loop "
                "TFLite converts), or use quantization=none.")
    if mode in CALIBRATED_MODES:
        return ("Use layers whose ops TFLite runs in int8, or quantization=dynamic or float16, which keep activations in float.")
    return "Replace the layer that uses it, or use quantization=none."


def _converter_failure(mode: str, exc: Exception) -> UnsupportedOpsError:
    """The converter's error (pages of MLIR locations) as one line: the first failing op and where it is.

    Its lines read ``<unknown>:0: error: loc(callsite(fused["Op:", "mlp/lstm/..."] at ...)): 'tf.Op' op ...``.
    """
    import re

    ops: List[Tuple[str, str]] = []
    first = ""
    for line in str(exc).splitlines():
        m = re.match(r".*?: error: loc\((?P<loc>.*)\): (?P<msg>.*)$", line)
        if not m:
            continue
        named = re.search(r"'tf\.(\w+)' op", m.group("msg")) or re.search(r"fused\[\"(\w+):", m.group("loc"))
        places = [w for w in re.findall(r"\"([^\"@]+)(?:@[^\"]*)?\"", m.group("loc")) if "/" in w]
        if named:
            ops.append((named.group(1), places[0] if places else ""))
            first = first or m.group("msg").strip()
    if not ops:  # another wording (a calibration run that cannot load an op, an older converter)
        ops = [(o, "") for o in re.findall(r"'tf\.(\w+)' op", str(exc))]
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    op, where = ops[0] if ops else ("?", "")
    problem = f"the TFLite converter cannot convert op {op}" + (f" (in {where})" if where else "") + f": {first[:160]}"
    return UnsupportedOpsError(mode, ops, problem.rstrip(".") , _op_fix(mode, op))


def float_ops(content: bytes) -> List[Tuple[str, str]]:
    """``(op, output tensor)`` of the ops of a converted model that compute in float (other than the
    (de)quantization at its edges). An int8 conversion leaves an op without an int8 kernel in float32 between
    a DEQUANTIZE and a QUANTIZE instead of failing; [] when the interpreter cannot list its ops."""
    import numpy as np

    interpreter = _interpreter(content)
    details = getattr(interpreter, "_get_ops_details", None)
    if details is None:
        return []
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = []
    for op in details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        inputs = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
        if any(np.dtype(t["dtype"]).kind == "f" for t in inputs):
            outputs = [tensors[i]["name"] for i in op["outputs"] if i in tensors]
            found.append((op["op_name"], outputs[0] if outputs else ""))
    return found


def _check_integer_only(mode: str, content: bytes) -> None:
    leftovers = float_ops(content)
    if leftovers:
        op, where = leftovers[0]
        more = f" (and {len(leftovers) - 1} more)" if len(leftovers) > 1 else ""
        raise UnsupportedOpsError(mode, leftovers, f"op {op} (in {where}){more} has no int8 kernel in TFLite, so the "
                                  f"converter would leave it in float32 and the model would not be integer-only",
                                  _op_fix(mode, op))


def convert(saved_model_dir: Path, mode: str, *, calibration: Optional[Sequence[np.ndarray]] = None,
            int8_io: bool = False, dense_per_channel: bool = False) -> bytes:
    """Convert a SavedModel to TFLite; ``mode`` is ``float32`` (no optimization) or a quantization mode.

    Dense layers get one scale per tensor unless ``dense_per_channel``: per-channel parameters cost a
    float scale and an int64 zero point per output unit for the kernel and again for the bias, which
    for a small MLP is a sixth of the int8 file. Convolutions stay per-channel either way.

    Raises :class:`UnsupportedOpsError` (a ConfigError naming the op) when the converter fails on an op, and
    for int8/qat when an op would stay in float32 (the model would not be the integer-only model asked for).
    """
    content = _convert(saved_model_dir, mode, calibration=calibration, int8_io=int8_io, dense_per_channel=dense_per_channel)
    if mode in CALIBRATED_MODES:
        _check_integer_only(mode, content)
    return content


def _convert(saved_model_dir: Path, mode: str, *, calibration: Optional[Sequence[np.ndarray]],
             int8_io: bool, dense_per_channel: bool) -> bytes:
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    # serving_default only: a version's classification/regression signatures parse tf.Examples, which TFLite
    # has no op for, and an on-device model is called with the raw rows anyway.
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=["serving_default"])

    def run() -> bytes:
        try:
            return converter.convert()
        except Exception as exc:  # ConverterError, or the ValueError a calibration run raises for an op it cannot load
            raise _converter_failure(mode, exc) from None

    if mode == "float32":
        return run()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # The converter exposes this switch only as an attribute; it is the one TFLite's own tools use.
    converter._experimental_disable_per_channel_quantization_for_dense_layers = not dense_per_channel
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode in CALIBRATED_MODES:
        if not calibration:
            raise ConfigError("quantization.calibration_batches", 0, f"quantization={mode} needs at least one calibration batch.")

        def representative() -> Iterator[List[np.ndarray]]:
            for batch in calibration:
                yield [batch]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    elif mode != "dynamic":
        raise ConfigError("quantization.mode", mode, f"Use one of: {', '.join(QuantizationMode.values())}.")
    return run()


# ------------------------------------------------------------------------------------------ evaluation
@dataclass
class TfliteResult:
    """One TFLite model on the test split (``accuracy`` is the mean absolute error for regression)."""

    bytes: int
    accuracy: float
    latency_ms: float
    predictions: np.ndarray


def decide(values: np.ndarray, kind: str) -> np.ndarray:
    """What a model's output rows predict: class ids (argmax), multi-hot labels (over 0.5) or the values."""
    import numpy as np

    if kind == PredictionKind.regression:
        return values.astype("float32").reshape(len(values), -1)
    if kind == PredictionKind.multi_label:
        return (values > 0.5).astype("int64")
    return np.argmax(values, axis=-1)


def _interpreter(content: bytes):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=content, num_threads=1)


def _quantize_input(x: np.ndarray, detail: Dict[str, Any]) -> np.ndarray:
    import numpy as np
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer) and np.issubdtype(x.dtype, np.floating):
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _dequantize(y: np.ndarray, detail: Dict[str, Any]) -> np.ndarray:
    import numpy as np
    scale, zero = detail["quantization"]
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype("float32") - zero) * scale
    return y


LATENCY_EXAMPLES = 500
LATENCY_REPEATS = 5


class _TfliteRunner:
    """One TFLite model in the LiteRT interpreter (one thread), run one example at a time."""

    def __init__(self, content: bytes, output_name: str, kind: str = PredictionKind.class_id):
        self.kind = kind
        self.runner = _interpreter(content).get_signature_runner()
        self.in_name, self.in_detail = next(iter(self.runner.get_input_details().items()))
        self.out_details = self.runner.get_output_details()
        self.out_name = output_name if output_name in self.out_details else next(iter(self.out_details))

    def feeds(self, x: np.ndarray) -> List[np.ndarray]:
        return [_quantize_input(x[i:i + 1], self.in_detail) for i in range(len(x))]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions (see :func:`decide`) for the rows of ``x``, run one at a time."""
        import numpy as np
        rows = [_dequantize(self.runner(**{self.in_name: feed})[self.out_name], self.out_details[self.out_name])[0]
                for feed in self.feeds(x)]
        return decide(np.stack(rows), self.kind) if rows else np.zeros((0,))

    def latency_ms(self, x: np.ndarray) -> float:
        """Mean milliseconds per example over ``x``, best of ``LATENCY_REPEATS`` passes (call after a first pass,
        which paid the delegate's one-off preparation: XNNPACK repacks weights)."""
        timed = self.feeds(x[:LATENCY_EXAMPLES])
        best = float("inf")
        for _ in range(LATENCY_REPEATS if timed else 0):
            start = time.perf_counter()
            for feed in timed:
                self.runner(**{self.in_name: feed})
            best = min(best, (time.perf_counter() - start) / len(timed))
        return 1000.0 * best if timed else float("nan")


def evaluate_tflite(content: bytes, x: np.ndarray, y: np.ndarray, *, output_name: str,
                    kind: str = PredictionKind.class_id) -> TfliteResult:
    """Run the model one example at a time on one thread: accuracy (mean absolute error for regression)
    and mean latency per example.

    Latency is the mean over up to ``LATENCY_EXAMPLES`` test examples, best of ``LATENCY_REPEATS``
    passes: on a shared machine a pass that was preempted says nothing about the model.
    """
    import numpy as np
    run = _TfliteRunner(content, output_name, kind)
    preds = run.predict(x)
    if kind == PredictionKind.regression:
        score = float(np.mean(np.abs(preds - y.reshape(preds.shape)))) if len(y) else float("nan")
    else:
        score = float(np.mean(preds == y)) if len(y) else float("nan")
    return TfliteResult(bytes=len(content), accuracy=score, latency_ms=run.latency_ms(x), predictions=preds)


def _float_predictor(saved_model_dir: Path, output_name: str, batch_size: int = 256, kind: str = PredictionKind.class_id):
    """A function from rows to the float SavedModel's predictions (``serving_default``; see :func:`decide`)."""
    import numpy as np
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    fn = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    arg = next(iter(fn.structured_input_signature[1]))

    def predict(x: np.ndarray) -> np.ndarray:
        out = [fn(**{arg: tf.constant(x[i:i + batch_size], tf.float32)})[output_name].numpy() for i in range(0, len(x), batch_size)]
        return decide(np.concatenate(out), kind) if out else np.zeros(0, dtype="int64")

    return predict


def float_predictions(saved_model_dir: Path, x: np.ndarray, *, output_name: str, batch_size: int = 256,
                      kind: str = PredictionKind.class_id) -> np.ndarray:
    """Predictions of the float SavedModel's ``serving_default`` signature (see :func:`decide`)."""
    return _float_predictor(saved_model_dir, output_name, batch_size, kind)(x)


def compare(saved_model_dir: Path, mode: str, x_test: Optional[np.ndarray] = None, y_test: Optional[np.ndarray] = None, *,
            output_name: str, batches: Optional[Iterable[Tuple[np.ndarray, np.ndarray]]] = None,
            calibration: Optional[Sequence[np.ndarray]] = None, int8_io: bool = False, dense_per_channel: bool = False,
            float32_tflite: Optional[bytes] = None, keep_dir: Optional[Path] = None,
            kind: str = PredictionKind.class_id) -> Tuple[Dict[str, Any], bytes]:
    """Convert ``saved_model_dir`` with ``mode`` and measure it against the float model.

    The evaluation data is ``x_test``/``y_test``, or ``batches`` of ``(x, y)`` taken one at a time (a
    streamed split: only counts are kept, so memory does not grow with it). ``kind`` says how outputs are
    read (:class:`~orchestrator.config.heads.PredictionKind`): a regression model is measured by its mean
    absolute error (``mae``, ``mae_increase``, ``mean_abs_diff`` from the float model) instead of accuracy.
    Returns the report recorded under ``quantization`` in metrics.json and the converted file's bytes.
    """
    import numpy as np
    baseline_bytes = float32_tflite or convert(saved_model_dir, "float32")
    content = convert(saved_model_dir, mode, calibration=calibration, int8_io=int8_io, dense_per_channel=dense_per_channel)
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        (keep_dir / "float32.tflite").write_bytes(baseline_bytes)
        (keep_dir / f"{mode}.tflite").write_bytes(content)
    reference = _float_predictor(saved_model_dir, output_name, kind=kind)
    base, quant = _TfliteRunner(baseline_bytes, output_name, kind), _TfliteRunner(content, output_name, kind)
    regression = kind == PredictionKind.regression
    # Counts (or, for regression, sums of absolute errors) over every value predicted: a class id per
    # example, a label per example and label, or each regressed value.
    n = values = float_right = quant_right = agree = 0
    timing_rows: List[np.ndarray] = []
    for x, y in (batches if batches is not None else [(x_test, y_test)]):
        if not len(y):
            continue
        ref, q = reference(x), quant.predict(x)
        y = np.asarray(y).reshape(ref.shape)
        n += len(y)
        values += int(y.size)
        if regression:
            float_right += float(np.sum(np.abs(ref - y)))
            quant_right += float(np.sum(np.abs(q - y)))
            agree += float(np.sum(np.abs(q - ref)))
        else:
            float_right += int(np.sum(ref == y))
            quant_right += int(np.sum(q == y))
            agree += int(np.sum(q == ref))
        if sum(len(r) for r in timing_rows) < LATENCY_EXAMPLES:
            timing_rows.append(np.asarray(x))
    timing = np.concatenate(timing_rows)[:LATENCY_EXAMPLES] if timing_rows else np.zeros((0,))
    base.predict(timing)  # its first pass, as the quantized file had one: both latencies are measured warm
    base_ms, quant_ms = base.latency_ms(timing), quant.latency_ms(timing)
    nan = float("nan")
    float_acc = float_right / values if values else nan
    quant_acc = quant_right / values if values else nan
    if regression:
        return {
            "mode": mode,
            "int8_io": bool(int8_io) if mode in CALIBRATED_MODES else None,
            "calibration_batches": len(calibration) if mode in CALIBRATED_MODES and calibration else None,
            "test_examples": int(n),
            "metric": "mae",
            "float": {"mae": float_acc, "tflite_bytes": len(baseline_bytes), "latency_ms": round(base_ms, 5)},
            "quantized": {"mae": quant_acc, "tflite_bytes": len(content), "latency_ms": round(quant_ms, 5)},
            "size_ratio": round(len(content) / len(baseline_bytes), 4),
            "mean_abs_diff": agree / values if values else nan,
            "mae_increase": round(quant_acc - float_acc, 6),
            "latency_ratio": round(quant_ms / base_ms, 4) if base_ms else None,
        }, content
    report = {
        "mode": mode,
        "int8_io": bool(int8_io) if mode in CALIBRATED_MODES else None,
        "calibration_batches": len(calibration) if mode in CALIBRATED_MODES and calibration else None,
        "test_examples": int(n),
        "float": {"accuracy": float_acc, "tflite_bytes": len(baseline_bytes), "latency_ms": round(base_ms, 5)},
        "quantized": {"accuracy": quant_acc, "tflite_bytes": len(content), "latency_ms": round(quant_ms, 5)},
        "size_ratio": round(len(content) / len(baseline_bytes), 4),
        "agreement": agree / values if values else nan,
        "accuracy_drop": round(float_acc - quant_acc, 6),
        "latency_ratio": round(quant_ms / base_ms, 4) if base_ms else None,
    }
    return report, content


def format_table(report: Dict[str, Any]) -> str:
    """The report as a small table: the float32 baseline and the converted model side by side."""
    if report.get("metric") == "mae":
        lines = [f"{'model':<10}{'size KB':>10}{'ratio':>8}{'MAE':>10}{'|diff|':>11}{'latency ms':>12}"]
        for name, r, ratio, diff in (("float32", report["float"], 1.0, 0.0),
                                     (report["mode"], report["quantized"], report["size_ratio"], report["mean_abs_diff"])):
            lines.append(f"{name:<10}{r['tflite_bytes'] / 1024:>10.1f}{ratio:>8.3f}{r['mae']:>10.4f}{diff:>11.4f}{r['latency_ms']:>12.4f}")
        gate = report.get("max_mae_increase")
        lines.append(f"error drop: MAE {report['mae_increase']:+.4f} (float {report['float']['mae']:.4f} -> "
                     f"{report['mode']} {report['quantized']['mae']:.4f})" + (f" (gate: at most +{gate:g})" if gate is not None else ""))
        return "\n".join(lines)
    rows = [("float32", report["float"], 1.0, 1.0), (report["mode"], report["quantized"], report["size_ratio"], report["agreement"])]
    lines = [f"{'model':<10}{'size KB':>10}{'ratio':>8}{'accuracy':>10}{'agreement':>11}{'latency ms':>12}"]
    for name, r, ratio, agree in rows:
        lines.append(f"{name:<10}{r['tflite_bytes'] / 1024:>10.1f}{ratio:>8.3f}{r['accuracy']:>10.4f}{agree:>11.4f}{r['latency_ms']:>12.4f}")
    gate = report.get("max_accuracy_drop")
    lines.append(f"accuracy drop {report['accuracy_drop'] * 100:+.2f} points" + (f" (gate: at most {gate * 100:.2f})" if gate is not None else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ publishing
def tflite_path(version_dir: Union[Path, str], mode: str) -> Union[Path, str]:
    """Where the conversion of a version is published: ``<model_dir>/<NNNN>.<mode>.tflite`` (a URI stays a URI)."""
    if storage.is_remote(version_dir):
        parent, name = storage.split(version_dir)
        return storage.join(parent, f"{name}.{mode}.tflite")
    version_dir = Path(version_dir)
    return version_dir.parent / f"{version_dir.name}.{mode}.tflite"


@dataclass
class Conversion:
    """A converted model that passed its gate, waiting for the version it belongs to."""

    report: Dict[str, Any]
    content: bytes

    def publish(self, version_dir: Optional[Union[Path, str]]) -> Dict[str, Any]:
        """Publish beside ``version_dir`` (None: export disabled, nothing published); return the report."""
        if version_dir is not None:
            path = publish.publish_file(tflite_path(version_dir, self.report["mode"]), self.content)
            self.report["file"] = str(path)
            log.info("published %s", path)
        return self.report


def convert_and_gate(cfg: ExperimentConfig, model: Any, splits: Any, run_dir: Path) -> Optional[Conversion]:
    """Convert the trained model per ``quantization``, evaluate it, print the table and apply the gate.

    Returns None for ``mode=none``. Raises GateError (after writing ``quantization/report.json`` in the
    run directory) when the accuracy drop exceeds ``quantization.max_accuracy_drop``.

    ``splits`` is the run's data: ``input_shape``, ``calibration_rows(batches, batch_size, seed)``,
    ``evaluation_batches(split=...)`` (``(x, y)`` batches) and ``evaluation_split`` (in-memory splits and
    streamed sources of ``orchestrator.training`` both have them). The report is measured on
    ``evaluation_split`` unless ``quantization.evaluation_split=validation``: a study that reads the
    quantized model's accuracy as an objective keeps the test split unseen that way.
    """
    q = cfg.quantization
    if q.mode == QuantizationMode.none:
        return None
    from orchestrator.artifacts.export import save_model
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    work = Path(run_dir) / "quantization"
    staging = work / "saved_model"
    save_model(tf, local_copy(model, q.mode), staging, splits.input_shape, cfg.export.input_name, cfg.export.output_name)
    # The data answers both (in-memory Splits, or a streamed source: rows from the first batches of its
    # training stream, evaluation batch by batch over its test or validation files).
    calib = splits.calibration_rows(int(q.calibration_batches), int(q.calibration_batch_size),
                                    seed=cfg.trainer.seed) if q.mode in CALIBRATED_MODES else None
    if calib is not None and len(calib) < q.calibration_batches:
        log.warning("the training split yields %d calibration batches, fewer than quantization.calibration_batches=%d",
                    len(calib), q.calibration_batches)
    split = "validation" if q.evaluation_split == QuantizationSplit.validation else splits.evaluation_split
    kind = prediction_kind(cfg)
    report, content = compare(staging, q.mode, batches=splits.evaluation_batches(split=split), output_name=cfg.export.output_name,
                     calibration=calib, int8_io=bool(q.int8_io), dense_per_channel=bool(q.dense_per_channel), keep_dir=work,
                     kind=kind)
    report["evaluated_on"] = split
    if kind == PredictionKind.regression:
        report["max_mae_increase"] = q.max_mae_increase
    else:
        report["max_accuracy_drop"] = q.max_accuracy_drop
    report["file"] = None
    shutil.rmtree(staging, ignore_errors=True)
    publish.write_json(work / "report.json", report)
    print(f"tfscale: quantization={q.mode} on {report['test_examples']} {split} examples\n{format_table(report)}")
    hint = ("Raise quantization.calibration_batches, set quantization.int8_io=false, or try quantization=qat"
            if q.mode == QuantizationMode.int8 else "Try a milder mode (float16, dynamic) or quantization=qat")
    if kind == PredictionKind.regression:
        if q.max_mae_increase is not None and report["mae_increase"] > q.max_mae_increase:
            raise GateError(
                f"quantization={q.mode} added {report['mae_increase']:.4f} to the mean absolute error "
                f"({report['float']['mae']:.4f} -> {report['quantized']['mae']:.4f}), more than "
                f"quantization.max_mae_increase={q.max_mae_increase} allows; nothing was published. {hint}, or relax "
                f"the gate. Measurements: {work / 'report.json'}")
        return Conversion(report, content)
    if q.max_accuracy_drop is not None and report["accuracy_drop"] > q.max_accuracy_drop:
        raise GateError(
            f"quantization={q.mode} lost {report['accuracy_drop'] * 100:.2f} accuracy points "
            f"({report['float']['accuracy']:.4f} -> {report['quantized']['accuracy']:.4f}), more than "
            f"quantization.max_accuracy_drop={q.max_accuracy_drop} allows; nothing was published. "
            + ("Raise quantization.calibration_batches, set quantization.int8_io=false, or try quantization=qat"
               if q.mode == QuantizationMode.int8 else "Try a milder mode (float16, dynamic) or quantization=qat")
            + f", or relax the gate. Measurements: {work / 'report.json'}")
    return Conversion(report, content)
