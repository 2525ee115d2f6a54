"""TF Serving's Classify and Regress APIs: tf.Example requests in, classes/scores or values out.

A classification or regression signature (method name ``tensorflow/serving/classify`` or ``.../regress``)
takes one input, ``inputs``: serialized ``tf.Example`` strings. Requests carry the examples as
``tensorflow_serving.apis.input_pb2.Input`` (gRPC) or as JSON (REST):
``{"signature_name": ..., "context": {feature: value|list}, "examples": [{feature: value|list}, ...]}``, where a
JSON number written with a decimal point or exponent becomes a ``float_list`` value, a whole number an
``int64_list`` value and a string (or ``{"b64": ...}``) a ``bytes_list`` value, as in TF Serving. The answers:
``{"results": [[[label, score], ...], ...]}`` for classify and ``{"results": [value, ...]}`` for regress — or the
``ClassificationResult`` / ``RegressionResult`` protos.
"""
from __future__ import annotations

import base64
import binascii
import math
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

import numpy as np

from orchestrator.serving.status import invalid

if TYPE_CHECKING:
    from orchestrator.serving.manager import Signature

CLASSIFY = "classify"
REGRESS = "regress"
METHOD_NAMES = {CLASSIFY: "tensorflow/serving/classify", REGRESS: "tensorflow/serving/regress"}
INPUTS = "inputs"  # the input key of both signature kinds
_WHAT = {CLASSIFY: "classification", REGRESS: "regression"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


# ------------------------------------------------------------------------------------------ requests
def _feature_kind(name: str, value: Any, allow_nonfinite: bool) -> Tuple[str, Any]:
    """The ``Feature`` list kind one JSON value goes to (``float_list`` | ``int64_list`` | ``bytes_list``) and the value."""
    if isinstance(value, bool) or value is None or isinstance(value, list):
        kind = "array" if isinstance(value, list) else "bool" if isinstance(value, bool) else "null"
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {kind}")
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: object "
                          "(only {\"b64\": <base64 string>} is accepted)")
        try:
            return "bytes_list", base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"JSON Value: {value} not formatted correctly for base64 data") from None
    if isinstance(value, str):
        return "bytes_list", value.encode()
    if isinstance(value, float):
        if not math.isfinite(value):
            if not allow_nonfinite:
                raise invalid(f"Feature: {name} contains NaN or Infinity, which this server rejects "
                              "(set serving.allow_nonfinite=true to accept them)")
        elif abs(value) > _FLOAT32_MAX:
            raise invalid(f"Cannot convert JSON value: {value} to float without loss of precision.")
        return "float_list", value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise invalid(f"Feature: {name} has an integer outside int64: {value}")
        return "int64_list", value
    raise invalid(f"Feature: {name} has element with unexpected JSON type: {type(value).__name__}")


def example_from_json(obj: Any, allow_nonfinite: bool, where: str) -> Any:
    """A ``tf.train.Example`` from one JSON object of feature name -> value or list of values."""
    from tensorflow.core.example import example_pb2

    if not isinstance(obj, dict):
        raise invalid(f"Example must be JSON object but got JSON {type(obj).__name__} ({where})")
    example = example_pb2.Example()
    for name, content in obj.items():
        feature = example.features.feature[name]
        kind_of_feature = None
        for value in (content if isinstance(content, list) else [content]):
            kind, item = _feature_kind(name, value, allow_nonfinite)
            if kind_of_feature not in (None, kind):
                raise invalid(f"Feature: {name} mixes value types ({kind_of_feature.split('_')[0]} and "
                              f"{kind.split('_')[0]}); TF Serving makes a whole number an int64 and a number with a "
                              "decimal point a float: write floats as 1.0, not 1")
            kind_of_feature = kind
            getattr(feature, kind).value.append(item)
    return example


def decode_json(body: Any, method: str, allow_nonfinite: bool) -> Tuple[str, List[bytes]]:
    """``(signature_name, serialized examples)`` of a REST classify/regress body."""
    if not isinstance(body, dict):
        raise invalid(f"The request body must be a JSON object with \"examples\" (method {method})")
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid("'signature_name' key must be a string value.")
    if "examples" not in body:
        raise invalid(f"When method is {method}, key 'examples' is expected and was not found")
    rows = body["examples"]
    if not isinstance(rows, list):
        raise invalid("Expecting 'examples' value to be an list/array")
    if not rows:
        raise invalid("'examples' value is an empty array")
    context = b""
    if "context" in body:
        context = example_from_json(body["context"], allow_nonfinite, "'context'").SerializeToString()
    # A context is merged into every example as TF Serving does: the two serialized messages one after the other.
    return signature_name, [context + example_from_json(r, allow_nonfinite, f"'examples'[{i}]").SerializeToString()
                            for i, r in enumerate(rows)]


def serialized_from_input(request_input: Any) -> List[bytes]:
    """The serialized examples of a gRPC ``Input`` (``example_list`` or ``example_list_with_context``)."""
    which = request_input.WhichOneof("kind")
    if which == "example_list":
        examples, context = request_input.example_list.examples, b""
    elif which == "example_list_with_context":
        examples = request_input.example_list_with_context.examples
        context = request_input.example_list_with_context.context.SerializeToString()
    else:
        raise invalid("Input is empty: set example_list or example_list_with_context")
    if not examples:
        raise invalid("Input is empty: the example list has no examples")
    return [context + e.SerializeToString() for e in examples]


# ------------------------------------------------------------------------------------------ running
def check_signature(sig: Signature, method: str, others: Dict[str, str]) -> None:
    """INVALID_ARGUMENT unless ``sig`` is a ``method`` signature TF Serving would accept.

    ``others``: every signature of the version by name -> method name (named in the message as the fix).
    """
    what = _WHAT[method]
    if sig.method_name != METHOD_NAMES[method]:
        fitting = sorted(k for k, v in others.items() if v == METHOD_NAMES[method])
        hint = (f"; this version's {what} signature is {', '.join(repr(k) for k in fitting)}: send "
                f"\"signature_name\": \"{fitting[0]}\"" if fitting else
                f"; this version has no {what} signature (export it with export.signatures=[serving_default,{what}])")
        raise invalid(f"Expected {what} signature method_name to be {METHOD_NAMES[method]}. Was: {sig.method_name} "
                      f"(signature '{sig.name}'){hint}")
    if set(sig.inputs) != {INPUTS} or sig.inputs[INPUTS].dtype.name != "string":
        raise invalid(f"No {what} inputs found in SignatureDef '{sig.name}': it needs one string input '{INPUTS}'")
    wanted = {"classes", "scores"} if method == CLASSIFY else {"outputs"}
    if not wanted & set(sig.outputs):
        raise invalid(f"Expected {what} signature outputs to contain {' or '.join(sorted(wanted))}; "
                      f"'{sig.name}' has {sorted(sig.outputs)}")


def _run(sig: Signature, serialized: List[bytes]) -> Dict[str, np.ndarray]:
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    batch = np.empty(len(serialized), dtype=object)
    batch[:] = serialized
    try:
        return sig.run({INPUTS: batch})
    except tf.errors.InvalidArgumentError as e:  # an example the signature cannot parse: the client's fault
        raise invalid(parse_error(str(e.message))) from None


def parse_error(message: str) -> str:
    """The line of a TensorFlow error that says what was wrong with an example (not the graph's node trace)."""
    lines = [line for line in message.splitlines() if line.strip()]
    found = next((line for line in lines if line.startswith("Name: ")), None)
    if found is None:
        trace = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[[")), len(lines))
        found = lines[trace - 1] if trace else (lines[0] if lines else message)
    found = found.replace("Name: <unknown>, ", "").strip()
    if "Data types don't match" in found and "int64" in found:
        found += " (a whole number in JSON is an int64: write float features as 1.0, not 1)"
    return found


def classify(sig: Signature, serialized: List[bytes]) -> List[List[Tuple[str, float]]]:
    """Per example, its ``(label, score)`` pairs (a missing label is "", a missing score 0.0)."""
    out = _run(sig, serialized)
    classes, scores = out.get("classes"), out.get("scores")
    n = len(serialized)
    for key, value in (("classes", classes), ("scores", scores)):
        if value is not None and (value.ndim != 2 or value.shape[0] != n):
            raise invalid(f"Expected {key} output of shape [{n}, num_classes], got {list(value.shape)}")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise invalid(f"Tensors class and score should match in shape: {list(classes.shape)} vs {list(scores.shape)}")
    width = (classes if classes is not None else scores).shape[1]
    results = []
    for i in range(n):
        row = []
        for j in range(width):
            label = classes[i, j] if classes is not None else b""
            label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            row.append((label, float(scores[i, j]) if scores is not None else 0.0))
        results.append(row)
    return results


def regress(sig: Signature, serialized: List[bytes]) -> List[float]:
    """One value per example."""
    out = _run(sig, serialized)["outputs"]
    n = len(serialized)
    if not (out.shape == (n,) or out.shape == (n, 1)):
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(out.shape)}")
    return [float(v) for v in out.reshape(-1)]


def run_method(sig: Signature, serialized: List[bytes], method: str, others: Dict[str, str]) -> Any:
    """Check ``sig`` for ``method`` and run it on the examples: :func:`classify` or :func:`regress` results."""
    check_signature(sig, method, others)
    return classify(sig, serialized) if method == CLASSIFY else regress(sig, serialized)


def results_json(results: Any) -> Dict[str, Any]:
    """The REST answer: ``{"results": ...}`` (label/score pairs per example, or one value per example)."""
    if results and isinstance(results[0], list):
        return {"results": [[[label, score] for label, score in row] for row in results]}
    return {"results": list(results)}


def fill_classification(result: Any, results: List[List[Tuple[str, float]]]) -> None:
    """Write :func:`classify` results into a ``ClassificationResult`` proto."""
    for row in results:
        classifications = result.classifications.add()
        for label, score in row:
            classifications.classes.add(label=label, score=score)


def fill_regression(result: Any, values: List[float]) -> None:
    """Write :func:`regress` results into a ``RegressionResult`` proto."""
    for value in values:
        result.regressions.add(value=value)

