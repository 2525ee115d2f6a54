"""``tfscale inspect FILE.tflite``: what a TFLite file takes and returns, and how it is quantized.

``describe`` lists each signature's inputs and outputs with dtype, shape (``-1`` for a dynamic
dimension) and quantization parameters (scale and zero point; per-channel tensors show how many
channels), plus a count of the tensor dtypes inside the graph, which tells a fully integer model from a
hybrid one at a glance. ``run`` feeds arrays through the LiteRT interpreter.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict

import numpy as np

from orchestrator.errors import ConfigError


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    path = Path(path)
    if not path.is_file():
        raise ConfigError("PATH", str(path), "No such .tflite file; give the path of a converted model, e.g. models/digits_mlp/0001.int8.tflite.")
    try:
        return Interpreter(model_path=str(path), num_threads=1)
    except ValueError as exc:
        raise ConfigError("PATH", str(path), f"Not a readable TFLite model ({exc}).") from exc


def _quantization(detail: Dict[str, Any]) -> str:
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []))
    zeros = np.asarray(params.get("zero_points", []))
    if scales.size == 0:
        return "none"
    if scales.size == 1:
        return f"scale={float(scales[0]):.6g} zero_point={int(zeros[0]) if zeros.size else 0}"
    return (f"per-channel (axis {params.get('quantized_dimension', 0)}, {scales.size} channels) "
            f"scale=[{scales.min():.3g}..{scales.max():.3g}] zero_point=[{zeros.min()}..{zeros.max()}]")


def _tensor_line(kind: str, key: str, detail: Dict[str, Any]) -> str:
    shape = detail.get("shape_signature")
    shape = list(shape if shape is not None and len(shape) else detail["shape"])
    return (f"  {kind:<6} {key}: dtype={np.dtype(detail['dtype']).name} shape={[int(s) for s in shape]} "
            f"quantization: {_quantization(detail)}")


def describe(path: Path) -> str:
    """Inputs, outputs, dtypes, shapes and quantization parameters of a TFLite file, as text."""
    path = Path(path)
    interp = _interpreter(path)
    lines = [f"TFLite model {path} ({path.stat().st_size:,} bytes)"]
    signatures = interp.get_signature_list()
    for name in signatures:
        runner = interp.get_signature_runner(name)
        lines.append(f"signature '{name}':")
        for key, detail in sorted(runner.get_input_details().items()):
            lines.append(_tensor_line("input", key, detail))
        for key, detail in sorted(runner.get_output_details().items()):
            lines.append(_tensor_line("output", key, detail))
    if not signatures:
        for detail in interp.get_input_details():
            lines.append(_tensor_line("input", detail["name"], detail))
        for detail in interp.get_output_details():
            lines.append(_tensor_line("output", detail["name"], detail))
    dtypes = Counter(np.dtype(d["dtype"]).name for d in interp.get_tensor_details())
    lines.append("tensors: " + ", ".join(f"{k} x{v}" for k, v in sorted(dtypes.items())))
    return "\n".join(lines)


def run(path: Path, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Run the file's first signature on ``inputs`` (name -> array with a batch dimension).

    Float arrays given for an integer-quantized input are quantized with that input's scale and zero
    point, so the same rows work for float and int8-input models. Outputs are returned as the model
    produces them (int8 outputs stay int8; ``describe`` shows how to dequantize them).
    """
    interp = _interpreter(Path(path))
    runner = interp.get_signature_runner()
    details = runner.get_input_details()
    unknown = sorted(set(inputs) - set(details))
    missing = sorted(set(details) - set(inputs))
    if unknown or missing:
        raise ConfigError("--inputs", sorted(inputs), f"The model's inputs are {sorted(details)}; missing: {missing}, unknown: {unknown}.")
    feed = {}
    for key, array in inputs.items():
        detail = details[key]
        array = np.asarray(array)
        dtype = np.dtype(detail["dtype"])
        scale, zero = detail["quantization"]
        if np.issubdtype(dtype, np.integer) and np.issubdtype(array.dtype, np.floating) and scale:
            info = np.iinfo(dtype)
            array = np.clip(np.round(array / scale + zero), info.min, info.max)
        feed[key] = array.astype(dtype)
    return {k: np.asarray(v) for k, v in runner(**feed).items()}
