"""Publishing SavedModel versions into a TF-Serving-style model repository.

``<model_base>/<model_name>/<NNNN>``: a server polling the repository loads any directory whose name is
a number, so a version must appear complete or not at all. It is written to a hidden temporary sibling
and renamed into place; ``rename`` of a directory is atomic on one filesystem, and fails if another run
took the number first, in which case the next number is tried.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^\d+$")
TFSCALE_RECORD = "assets.extra/tfscale.json"


def existing_versions(model_dir: Path) -> list[int]:
    """Version numbers published under ``model_dir`` (numeric directory names only)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name))


def publish_directory(model_dir: Path, write: Callable[[Path], None], *, suffix: str = "") -> Path:
    """Write a new version with ``write(tmp_dir)`` and rename it to the next free ``NNNN``.

    On any failure the temporary directory is removed: nothing half-written is left behind.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-version-", dir=model_dir))
    try:
        write(tmp)
        for _ in range(100):
            version = (existing_versions(model_dir) or [0])[-1] + 1
            target = model_dir / f"{version:04d}{suffix}"
            try:
                os.rename(tmp, target)  # fails if a concurrent run published this number first
                log.info("published %s", target)
                return target
            except OSError:
                if not target.exists():
                    raise
        raise RuntimeError(f"Could not find a free version number under {model_dir}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def serving_function(tf: Any, model: Any, input_shape: Sequence[int], input_name: str, output_name: str):
    """The ``serving_default`` signature: raw ``input_name`` rows in, probabilities and classes out."""

    @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.float32, name=input_name)])
    def serve(x):
        probs = tf.cast(model(x, training=False), tf.float32)
        return {output_name: probs, "classes": tf.argmax(probs, axis=-1)}

    return serve


def save_model(tf: Any, model: Any, path: Path, input_shape: Sequence[int], input_name: str, output_name: str,
               record: Optional[Dict[str, Any]] = None) -> None:
    """Save ``model`` as a SavedModel with tfscale's signature (and its run record in assets.extra)."""
    fn = serving_function(tf, model, input_shape, input_name, output_name)
    tf.saved_model.save(model, str(path), signatures={"serving_default": fn.get_concrete_function()})
    if record is not None:
        extra = path / TFSCALE_RECORD
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text(json.dumps(record, indent=2, default=str))


def export_version(tf: Any, model: Any, cfg: Any, input_shape: Sequence[int], record: Dict[str, Any]) -> Path:
    """Publish the trained model as the next version of ``export.model_name``; return its directory."""
    model_dir = Path(cfg.export.model_base) / str(cfg.export.model_name)
    return publish_directory(model_dir, lambda tmp: save_model(
        tf, model, tmp, input_shape, cfg.export.input_name, cfg.export.output_name, record))
