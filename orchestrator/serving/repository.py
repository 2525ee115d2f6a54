"""The model repository on disk: ``<model_base>/<name>/<NNNN>`` version directories and version policies.

Only directories whose name is a number are versions; hidden siblings (a version being published, or one
moved aside by ``tfscale rollback --remove``) are ignored, so a half-written version is never loaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple


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


def version_dirs(base_path: str | os.PathLike) -> Dict[int, Path]:
    """Published versions of one model: ``{version: directory}`` for numeric subdirectories only."""
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
    base = Path(model_base).resolve()
    entries = []
    if base.is_dir():
        for child in sorted(base.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and version_dirs(child):
                entries.append(ModelEntry(child.name, str(child), policy, dict(labels or {})))
    return entries
