"""Request decoding and validation, and response encoding, in TF Serving's REST formats.

Row format: ``{"instances": [...]}`` — one entry per example; with a single input each entry is the value
(or ``{"<input>": value}``), with several inputs each entry is an object with every input. Answer:
``{"predictions": [...]}`` — per example the value of the single output, or an object of all outputs.

Columnar format: ``{"inputs": value}`` (single input) or ``{"inputs": {"<input>": value, ...}}``. Answer:
``{"outputs": value}`` (single output) or ``{"outputs": {"<output>": value, ...}}``.
"""
from __future__ import annotations

import base64
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from orchestrator.serving.status import invalid

ROW = "row"
COLUMNAR = "columnar"


def _np_dtype(spec: Any):
    return np.object_ if spec.dtype.name == "string" else spec.dtype.as_numpy_dtype


def _expected_shape(spec: Any) -> str:
    if spec.shape.rank is None:
        return "any shape"
    return "[" + ", ".join("-1" if d is None else str(d) for d in spec.shape.as_list()) + "]"


def _decode_b64(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value.encode() if isinstance(value, str) else value


def to_array(key: str, value: Any, spec: Any, allow_nonfinite: bool, where: str) -> np.ndarray:
    """``value`` (nested lists from JSON, or an array) as an array of the signature's dtype, or INVALID_ARGUMENT."""
    want = _np_dtype(spec)
    if want is np.object_:
        arr = np.array(_decode_b64(value), dtype=object)
    else:
        try:
            raw = value if isinstance(value, np.ndarray) else np.array(value)
        except ValueError:
            raise invalid(f"{where}: input '{key}' is ragged (rows of different lengths); "
                          f"expected shape {_expected_shape(spec)}") from None
        kind = raw.dtype.kind
        if kind in "OUSV":
            raise invalid(f"{where}: input '{key}' must hold numbers of type {spec.dtype.name}, got "
                          f"{'mixed or nested values' if kind == 'O' else 'strings'}; expected shape {_expected_shape(spec)}")
        target = np.dtype(want)
        if target.kind in "iu" and kind == "f":
            if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
                raise invalid(f"{where}: input '{key}' is of type {spec.dtype.name}; got non-integer numbers")
        if kind == "b" and target.kind != "b":  # JSON true/false would silently become 1.0/0.0
            raise invalid(f"{where}: input '{key}' is of type {spec.dtype.name}; got bool values")
        if target.kind == "b" and kind != "b":
            raise invalid(f"{where}: input '{key}' is of type bool; got {raw.dtype.name} values")
        arr = raw.astype(target, copy=False)
        if target.kind == "f" and not allow_nonfinite and not np.all(np.isfinite(arr)):
            raise invalid(f"{where}: input '{key}' contains NaN or Infinity, which this server rejects "
                          f"(set serving.allow_nonfinite=true to accept them)")
    check_shape(key, arr, spec, where)
    return arr


def check_shape(key: str, arr: np.ndarray, spec: Any, where: str) -> None:
    """INVALID_ARGUMENT unless ``arr``'s shape fits the signature input ``spec``."""
    if spec.shape.rank is None:
        return
    dims = spec.shape.as_list()
    if arr.ndim != len(dims) or any(d is not None and d != a for d, a in zip(dims, arr.shape)):
        raise invalid(f"{where}: input '{key}' has shape {list(arr.shape)} but the signature expects "
                      f"{_expected_shape(spec)} (-1 = any size)")


def check_inputs(inputs: Dict[str, np.ndarray], specs: Dict[str, Any], where: str = "Request") -> None:
    """Every signature input present, no unknown ones, and one batch size across inputs."""
    missing = sorted(set(specs) - set(inputs))
    extra = sorted(set(inputs) - set(specs))
    if missing or extra:
        raise invalid(f"{where}: the signature takes inputs {sorted(specs)}; "
                      f"{'missing ' + str(missing) if missing else ''}{'; ' if missing and extra else ''}"
                      f"{'unknown ' + str(extra) if extra else ''}")
    sizes = {k: v.shape[0] for k, v in inputs.items() if v.ndim > 0}
    if len(set(sizes.values())) > 1:
        raise invalid(f"{where}: inputs have different batch sizes {sizes}; every input needs the same number of rows")


def decode_rest(body: Any, specs: Dict[str, Any], allow_nonfinite: bool) -> Tuple[Dict[str, np.ndarray], str]:
    """Inputs of a REST predict body and which format it used."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object with \"instances\" or \"inputs\"")
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows == has_cols:
        raise invalid("Missing 'inputs' or 'instances' key" if not has_rows else
                      "Request can have either 'inputs' or 'instances' key, not both")
    names = sorted(specs)
    if has_rows:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise invalid("'instances' must be a non-empty list with one entry per example")
        if len(names) == 1 and not all(isinstance(r, dict) for r in rows):
            key = names[0]
            values = {key: rows}
        else:
            if not all(isinstance(r, dict) for r in rows):
                raise invalid(f"The signature has inputs {names}: each of 'instances' must be an object with those keys")
            keys = set(rows[0])
            for i, r in enumerate(rows):
                if set(r) != keys:
                    raise invalid(f"Failed to process element: {i} of 'instances' list: it has keys {sorted(r)}, "
                                  f"element 0 has {sorted(keys)}")
            values = {k: [r[k] for r in rows] for k in keys}
        check_inputs({k: np.empty((len(rows),)) for k in values}, specs, "'instances'")
        arrays = {k: to_array(k, v, specs[k], allow_nonfinite, "'instances'") for k, v in values.items()}
        return arrays, ROW
    cols = body["inputs"]
    if len(names) == 1 and not (isinstance(cols, dict) and set(cols) == {names[0]}):
        if isinstance(cols, dict) and not ("b64" in cols and len(cols) == 1):
            raise invalid(f"'inputs' names {sorted(cols)} but the signature's only input is '{names[0]}'")
        values = {names[0]: cols}
    else:
        if not isinstance(cols, dict):
            raise invalid(f"The signature has inputs {names}: 'inputs' must be an object with those keys")
        values = dict(cols)
    check_inputs({k: np.empty((1,)) for k in values}, specs, "'inputs'")
    arrays = {k: to_array(k, v, specs[k], allow_nonfinite, "'inputs'") for k, v in values.items()}
    check_inputs(arrays, specs, "'inputs'")
    return arrays, COLUMNAR


def _jsonable(arr: np.ndarray) -> Any:
    if arr.dtype == object or arr.dtype.kind == "S":
        flat = [_bytes_to_json(x) for x in arr.reshape(-1)]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist()
    return arr.tolist()


def _bytes_to_json(x: Any) -> Any:
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(x).decode()}
    return x


def encode_rest(outputs: Dict[str, np.ndarray], fmt: str, output_filter: Optional[List[str]] = None) -> Dict[str, Any]:
    """The JSON answer for ``outputs`` in the request's format."""
    if output_filter:
        outputs = {k: v for k, v in outputs.items() if k in output_filter}
    names = sorted(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            return {"outputs": _jsonable(outputs[names[0]])}
        return {"outputs": {k: _jsonable(outputs[k]) for k in names}}
    if len(names) == 1:
        return {"predictions": _jsonable(outputs[names[0]])}
    columns = {k: _jsonable(outputs[k]) for k in names}
    rows = len(next(iter(columns.values())))
    return {"predictions": [{k: columns[k][i] for k in names} for i in range(rows)]}
