"""Publishing SavedModel versions into a TF-Serving-style model repository.

``<model_base>/<model_name>/<NNNN>``: a server polling the repository loads any directory whose name is
a number, so a version must appear complete or not at all. :mod:`orchestrator.artifacts.publish` writes it
to a hidden temporary sibling, fsyncs it, makes it readable by a server running as another user and
renames it to the next free number.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from orchestrator.artifacts import storage
from orchestrator.artifacts.publish import VERSION_RE, existing_versions, publish_directory  # noqa: F401  (public here)
from orchestrator.artifacts.redact import redact
from orchestrator.config.heads import PredictionKind
from orchestrator.config.schema import ExtraOutput, SignatureKind
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

log = logging.getLogger(__name__)

TFSCALE_RECORD = "assets.extra/tfscale.json"

SERVING_DEFAULT = "serving_default"
#: TF Serving's method name of each signature tfscale can export (its Classify/Regress APIs check them).
METHOD_NAMES = {SignatureKind.serving_default: "tensorflow/serving/predict",
                SignatureKind.classification: "tensorflow/serving/classify",
                SignatureKind.regression: "tensorflow/serving/regress"}
#: The input key of TF Serving's classification and regression signatures: serialized tf.Example strings.
EXAMPLES_INPUT = "inputs"


def _float32(tf: Any, value: Any) -> Any:
    return tf.cast(value, tf.float32) if value.dtype in (tf.float16, tf.bfloat16) else value


def _single_output(model: Any, key: str, what: str) -> None:
    if len(getattr(model, "outputs", None) or [None]) != 1:
        raise ConfigError(key, what, f"{what} needs a model with one output; this one has "
                          f"{list(model.output_names)}. Remove it, or have model.builder return one output.")


def serving_function(tf: Any, model: Any, input_shape: Sequence[int], input_name: str, output_name: str,
                     outputs: Sequence[str] = (), kind: str = PredictionKind.class_id):
    """The ``serving_default`` signature: raw ``input_name`` rows in, exactly the model's outputs out.

    That is what Keras' own export gives, so a TF Serving client written for a Keras model reads the answer
    as it expects (one output: ``predictions`` is a batch of arrays). A single output is named
    ``output_name``; several keep the model's output names. ``outputs`` adds more: ``classes`` (the class
    id, or for multi-label models the labels over 0.5).
    """
    names = list(getattr(model, "output_names", None) or [output_name])
    extra = [str(o) for o in outputs]
    if extra:
        _single_output(model, "export.outputs", extra[0])

    @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.float32, name=input_name)])
    def serve(x):
        out = model(x, training=False)
        if isinstance(out, dict):
            result = dict(out)
        elif isinstance(out, (list, tuple)):
            result = dict(zip(names, out)) if len(out) > 1 else {output_name: out[0]}
        else:
            result = {output_name: out}
        result = {k: _float32(tf, v) for k, v in result.items()}
        if ExtraOutput.classes in extra:
            scores = result[output_name]
            result["classes"] = (tf.cast(scores > 0.5, tf.int64) if kind == PredictionKind.multi_label
                                 else tf.argmax(scores, axis=-1))
        return result

    return serve


def _parsed_rows(tf: Any, examples: Any, input_shape: Sequence[int], input_name: str) -> Any:
    spec = {input_name: tf.io.FixedLenFeature(list(input_shape), tf.float32)}
    return tf.io.parse_example(examples, spec)[input_name]


def classification_function(tf: Any, model: Any, input_shape: Sequence[int], input_name: str):
    """TF Serving's classification signature: serialized tf.Example strings (feature ``input_name`` = the raw
    row) in; ``classes`` (labels "0".."n-1", a row per example) and ``scores`` (the model's output) out."""
    _single_output(model, "export.signatures", SignatureKind.classification.value)
    units = int(model.outputs[0].shape[-1])
    labels = [str(i) for i in range(units)]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def classify(inputs):
        scores = _float32(tf, model(_parsed_rows(tf, inputs, input_shape, input_name), training=False))
        classes = tf.tile(tf.constant([labels]), [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": scores}

    return classify


def regression_function(tf: Any, model: Any, input_shape: Sequence[int], input_name: str):
    """TF Serving's regression signature: serialized tf.Example strings in, one value per example out
    (``outputs``)."""
    _single_output(model, "export.signatures", SignatureKind.regression.value)
    units = model.outputs[0].shape[-1]
    if len(model.outputs[0].shape) != 2 or units != 1:
        raise ConfigError("export.signatures", SignatureKind.regression.value,
                          f"TF Serving's Regress answers one value per example; this model's output has shape "
                          f"{model.outputs[0].shape.as_list()}. Use a model with one output unit, or drop regression.")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def regress(inputs):
        values = _float32(tf, model(_parsed_rows(tf, inputs, input_shape, input_name), training=False))
        return {"outputs": tf.reshape(values, [-1])}

    return regress


def set_method_names(path: Path, methods: Dict[str, str]) -> None:
    """Give signatures of a saved SavedModel their TF Serving method names.

    ``tf.saved_model.save`` marks every signature ``tensorflow/serving/predict`` and has no option for
    another; TF Serving's Classify and Regress refuse a signature without theirs. The name lives only in
    ``saved_model.pb``'s SignatureDef, so it is set there, and the fingerprint (a checksum of that file)
    is written again.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(path) / "saved_model.pb"
    sm = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for graph in sm.meta_graphs:
        for key, method in methods.items():
            if key in graph.signature_def:
                graph.signature_def[key].method_name = method
    pb.write_bytes(sm.SerializeToString())
    try:
        from tensorflow.python.saved_model import fingerprinting_utils

        fingerprinting_utils.write_fingerprint(str(path))
    except (ImportError, AttributeError, ValueError) as exc:  # a stale fingerprint only misleads, so drop it
        log.warning("could not rewrite %s/fingerprint.pb (%s); removing it", path, exc)
        (Path(path) / "fingerprint.pb").unlink(missing_ok=True)


def signature_options(cfg: ExperimentConfig) -> Dict[str, Any]:
    """The keyword arguments of :func:`save_model` that the ``export`` group and ``model.head`` decide."""
    from orchestrator.config.heads import prediction_kind

    return {"outputs": tuple(str(o) for o in cfg.export.outputs), "signatures": tuple(str(s) for s in cfg.export.signatures),
            "kind": prediction_kind(cfg)}


#: The model attribute :func:`signature_functions` keeps its functions in.
_SIGNATURE_CACHE = "_tfscale_signature_functions"


def signature_functions(tf: Any, model: Any, input_shape: Sequence[int], input_name: str, output_name: str, *,
                        outputs: Sequence[str] = (), signatures: Sequence[str] = (SERVING_DEFAULT,),
                        kind: str = PredictionKind.class_id) -> Dict[str, Any]:
    """``{signature key: tf.function}`` of a version (what :func:`save_model` saves; the pre-flight traces them).

    ``signatures``: ``serving_default`` (the model's outputs plus ``outputs``), and optionally
    ``classification`` / ``regression``. The functions are kept with the model, so the export after training
    reuses the traces the pre-flight made before it (a trace reads the variables, not their values).
    """
    key = (tuple(input_shape), input_name, output_name, tuple(str(o) for o in outputs),
           tuple(str(s) for s in signatures), str(kind))
    cache = getattr(model, _SIGNATURE_CACHE, None)
    if cache is None:
        cache = {}
        try:  # past Keras' attribute tracking: a plain attribute, never saved with the model
            object.__setattr__(model, _SIGNATURE_CACHE, cache)
        except (AttributeError, TypeError):
            pass
    if key in cache:
        return cache[key]
    functions = {SERVING_DEFAULT: serving_function(tf, model, input_shape, input_name, output_name, outputs, kind)}
    if SignatureKind.classification in signatures:
        functions[SignatureKind.classification.value] = classification_function(tf, model, input_shape, input_name)
    if SignatureKind.regression in signatures:
        functions[SignatureKind.regression.value] = regression_function(tf, model, input_shape, input_name)
    cache[key] = functions
    return functions


def save_model(tf: Any, model: Any, path: Path, input_shape: Sequence[int], input_name: str, output_name: str,
               record: Optional[Dict[str, Any]] = None, *, outputs: Sequence[str] = (),
               signatures: Sequence[str] = (SERVING_DEFAULT,), kind: str = PredictionKind.class_id) -> None:
    """Save ``model`` as a SavedModel with tfscale's signatures (and its run record, redacted, in assets.extra).

    ``signatures``: ``serving_default`` (the model's outputs plus ``outputs``), and optionally
    ``classification`` / ``regression`` with TF Serving's method names (see :func:`set_method_names`).
    """
    functions = signature_functions(tf, model, input_shape, input_name, output_name, outputs=outputs,
                                    signatures=signatures, kind=kind)
    tf.saved_model.save(model, str(path), signatures={k: f.get_concrete_function() for k, f in functions.items()})
    special = {k: METHOD_NAMES[SignatureKind(k)] for k in functions if k != SERVING_DEFAULT}
    if special:
        set_method_names(path, special)
    if record is not None:
        extra = path / TFSCALE_RECORD
        extra.parent.mkdir(parents=True, exist_ok=True)
        # Written inside the version being staged: the publisher seals and renames the whole directory.
        extra.write_text(json.dumps(redact(record), indent=2, default=str))


def export_version(tf: Any, model: Any, cfg: ExperimentConfig, input_shape: Sequence[int], record: Dict[str, Any]) -> Path | str:
    """Publish the trained model as the next version of ``export.model_name``; return its directory.

    ``export.model_base`` may be a bucket URI (``gs://b/models``): the version is saved locally, then uploaded
    with ``saved_model.pb`` last, and its URI is returned (see :mod:`orchestrator.artifacts.publish`).
    """
    model_dir = storage.join(cfg.export.model_base, str(cfg.export.model_name))
    return publish_directory(model_dir, lambda tmp: save_model(
        tf, model, tmp, input_shape, cfg.export.input_name, cfg.export.output_name, record, **signature_options(cfg)))
