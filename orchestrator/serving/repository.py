"""The model repository on disk: ``<model_base>/<name>/<NNNN>`` version directories and version policies.

Only directories whose name is a number are versions; hidden siblings (a version being published, or one
moved aside by ``tfscale rollback --remove``) are ignored, so a half-written version is never loaded.

``model_base`` may be a bucket URI (``gs://b/models``): there a numeric directory is a version once its
``saved_model.pb`` is there (the publisher uploads it last, see :mod:`orchestrator.artifacts.publish`), and a
version's location is its URI; the manager downloads it to a local cache before loading it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from orchestrator.artifacts import storage
from orchestrator.artifacts.publish import visible_versions


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions to load: ``latest`` (the ``num_versions`` highest), ``all``, or ``specific``."""

    policy: str = "latest"
    num_versions: int = 1
    versions: Tuple[int, ...] = ()

    def select(self, available: List[int]) -> List[int]:
        """The versions to keep loaded out of ``available`` (sorted ascending)."""
        ordered = sorted(set(available))
        if self.policy == "all":
            return ordered
        if self.policy == "specific":
            wanted = set(self.versions)
            return [v for v in ordered if v in wanted]
        return ordered[-self.num_versions:] if self.num_versions > 0 else []


@dataclass
class ModelEntry:
    """One model as a ``models.config`` entry describes it."""

    name: str
    base_path: str
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: Dict[str, int] = field(default_factory=dict)
    platform: str = "tensorflow"


def version_dirs(base_path: str | os.PathLike) -> Dict[int, Path | str]:
    """Published versions of one model: ``{version: directory}`` for numeric subdirectories only (URIs on a bucket)."""
    if storage.is_remote(base_path):
        return dict(visible_versions(base_path))
    base = Path(base_path)
    found: Dict[int, Path] = {}
    try:
        children = list(os.scandir(base))
    except FileNotFoundError:
        return found
    for child in children:
        if child.name.isdigit() and child.is_dir():
            found[int(child.name)] = Path(child.path)
    return found


def discover_models(model_base: str | os.PathLike, policy: VersionPolicy, labels: Optional[Dict[str, int]] = None) -> List[ModelEntry]:
    """Every model directory under ``model_base`` that holds at least one version."""
    if storage.is_remote(model_base):
        return [ModelEntry(name, storage.join(model_base, name), policy, dict(labels or {}))
                for name in storage.listdir(model_base)
                if not name.startswith(".") and version_dirs(storage.join(model_base, name))]
    base = Path(model_base).resolve()
    entries = []
    if base.is_dir():
        for child in sorted(base.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and version_dirs(child):
                entries.append(ModelEntry(child.name, str(child), policy, dict(labels or {})))
    return entries
