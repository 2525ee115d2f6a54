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

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

log = logging.getLogger(__name__)

TFSCALE_RECORD = "assets.extra/tfscale.json"


def serving_function(tf: Any, model: Any, input_shape: Sequence[int], input_name: str, output_name: str):
    """The ``serving_default`` signature: raw ``input_name`` rows in, probabilities and classes out."""

    @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.float32, name=input_name)])
    def serve(x):
        probs = tf.cast(model(x, training=False), tf.float32)
        return {output_name: probs, "classes": tf.argmax(probs, axis=-1)}

    return serve


def save_model(tf: Any, model: Any, path: Path, input_shape: Sequence[int], input_name: str, output_name: str,
               record: Optional[Dict[str, Any]] = None) -> None:
    """Save ``model`` as a SavedModel with tfscale's signature (and its run record, redacted, in assets.extra)."""
    fn = serving_function(tf, model, input_shape, input_name, output_name)
    tf.saved_model.save(model, str(path), signatures={"serving_default": fn.get_concrete_function()})
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
        tf, model, tmp, input_shape, cfg.export.input_name, cfg.export.output_name, record))
