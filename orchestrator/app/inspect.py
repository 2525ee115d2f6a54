"""``tfscale inspect PATH [--run --inputs KEY=file.npy ...]``: what ``saved_model_cli show/run`` do.

PATH is a SavedModel directory (a model version such as ``models/digits_mlp/0001``), a model directory
(its newest version is used), or a ``.tflite`` file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from orchestrator.errors import ConfigError


def _resolve(path: Path) -> Path:
    if path.suffix == ".tflite" or (path / "saved_model.pb").exists():
        return path
    from orchestrator.artifacts.export import existing_versions

    versions = existing_versions(path)
    if versions:
        return path / f"{versions[-1]:04d}"
    raise ConfigError("PATH", str(path), "Give a SavedModel directory (with saved_model.pb), a model directory holding numbered versions, or a .tflite file.")


def _parse_inputs(pairs: List[str]) -> Dict[str, np.ndarray]:
    arrays = {}
    for pair in pairs:
        key, sep, file = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--inputs", pair, "Use KEY=file.npy (KEY is a signature input name, e.g. features).")
        if not Path(file).exists():
            raise ConfigError("--inputs", pair, f"No such file: {file}.")
        arrays[key] = np.load(file)
    return arrays


def describe_saved_model(path: Path) -> str:
    """Signatures of a SavedModel: input and output names, dtypes and shapes."""
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2

    loaded = tf.saved_model.load(str(path))
    # The method name (what TF Serving's Predict, Classify or Regress accept) is only in saved_model.pb.
    defs = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes()).meta_graphs[0].signature_def
    lines = [f"SavedModel {path}"]
    for name, fn in loaded.signatures.items():
        method = defs[name].method_name if name in defs else ""
        lines.append(f"signature '{name}':" + (f" method {method}" if method else ""))
        _, kwargs = fn.structured_input_signature
        for key, spec in sorted(kwargs.items()):
            lines.append(f"  input  {key}: dtype={spec.dtype.name} shape={spec.shape.as_list()}")
        for key, spec in sorted(fn.structured_outputs.items()):
            lines.append(f"  output {key}: dtype={spec.dtype.name} shape={spec.shape.as_list()}")
    record = path / "assets.extra" / "tfscale.json"
    if record.exists():
        meta = json.loads(record.read_text())
        lines.append(f"trained by run {meta.get('run_dir')} at commit {(meta.get('git') or {}).get('sha')}")
    return "\n".join(lines)


def run_saved_model(path: Path, inputs: Dict[str, np.ndarray], signature: str = "serving_default") -> Dict[str, np.ndarray]:
    """Call a signature of a SavedModel on numpy inputs."""
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    loaded = tf.saved_model.load(str(path))
    if signature not in loaded.signatures:
        raise ConfigError("--signature", signature, f"The model has signatures {sorted(loaded.signatures)}.")
    fn = loaded.signatures[signature]
    _, specs = fn.structured_input_signature
    missing = sorted(set(specs) - set(inputs))
    unknown = sorted(set(inputs) - set(specs))
    if missing or unknown:
        raise ConfigError("--inputs", sorted(inputs), f"The signature takes {sorted(specs)}; missing {missing}, unknown {unknown}.")
    feeds = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()}
    return {k: v.numpy() for k, v in fn(**feeds).items()}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tfscale inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--run", action="store_true", help="run the model on --inputs and print its outputs")
    parser.add_argument("--inputs", nargs="+", default=[], metavar="KEY=FILE.npy")
    parser.add_argument("--signature", default="serving_default")
    args = parser.parse_args(argv)
    path = _resolve(args.path)
    if path.suffix == ".tflite":
        from orchestrator.app import inspect_tflite

        if not args.run:
            print(inspect_tflite.describe(path))
            return 0
        outputs = inspect_tflite.run(path, _parse_inputs(args.inputs))
    else:
        if not args.run:
            print(describe_saved_model(path))
            return 0
        if not args.inputs:
            raise ConfigError("--inputs", [], "--run needs inputs: --inputs features=rows.npy")
        outputs = run_saved_model(path, _parse_inputs(args.inputs), args.signature)
    np.set_printoptions(threshold=2000, linewidth=150)
    for key in sorted(outputs):
        print(f"Result for output key {key}:")
        print(outputs[key])
    return 0
