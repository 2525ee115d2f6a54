"""The keys of the root ``study:`` node, for messages about a key a study file does not declare.

The ``study:`` node is untyped (each study file is the native, AI Platform or Vertex form), so Hydra only
knows the keys the selected file declares. These are the keys each form accepts, plus the keys tfscale's
sweeper reads next to the spec (:data:`NODE_KEYS`).
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

#: Keys of the ``study:`` node besides the spec: its name (and directory, ``runs/studies/<name>``), the
#: AI Platform/Vertex parameter-to-config-key map, and the earlier studies a warm start learns from.
NODE_KEYS = ("name", "param_map", "warm_start_from")


def split_node(raw: Mapping[str, Any]) -> "tuple[dict, dict]":
    """A ``study:`` node as a plain dict: its spec (every key but :data:`NODE_KEYS`) and those keys' values."""
    spec = dict(raw)
    return spec, {key: spec.pop(key) for key in NODE_KEYS if key in spec}

_VERTEX_TOP = ("studySpec", "metrics", "parameters", "algorithm", "measurementSelectionType", "observationNoise",
               "medianAutomatedStoppingSpec", "decayCurveStoppingSpec", "maxTrialCount", "parallelTrialCount",
               "maxFailedTrialCount")
_EARLY_STOPPING = ("rule", "min_trials", "min_steps", "margin", "max_step")


def _is_index(part: str) -> bool:
    return part.isdigit()


def study_fields(path: Sequence[str], node: Optional[Mapping[str, Any]] = None) -> Optional[List[str]]:
    """The keys a study accepts at ``path`` below ``study`` (``[]`` for the node itself), or None where any
    key may do or the form is not known. ``node``: the mapping at ``path`` as the study file declares it,
    which tells the form (native, AI Platform, Vertex)."""
    from tuners._spec_parsers import (_AI_PARAM_KEYS, _AI_TOP_KEYS, _NATIVE_PARAM_KEYS, _NATIVE_TOP_KEYS,
                                      dialect)

    path, node = list(path), dict(node or {})
    if not path:
        form = dialect(node)
        if form == "ai_platform":
            top = ({"trainingInput"} if "trainingInput" in node else
                   {"hyperparameters"} if "hyperparameters" in node else set(_AI_TOP_KEYS))
        elif form == "vertex":
            top = set(_VERTEX_TOP)
        else:
            top = set(_NATIVE_TOP_KEYS) - ({"metrics"} if "metric" in node else {"metric"} if "metrics" in node
                                           else set())
            top.add("warm_start_from")  # param_map maps AI Platform/Vertex parameter names only
            return sorted(top | {"name"})
        return sorted(top | set(NODE_KEYS))
    if path in (["trainingInput", "hyperparameters"], ["hyperparameters"]):
        return sorted(_AI_TOP_KEYS)
    if len(path) >= 2 and path[-2] == "params" and _is_index(path[-1]):
        return sorted(_AI_PARAM_KEYS)
    if path == ["metric"] or (len(path) == 2 and path[0] == "metrics" and _is_index(path[1])
                              and "metricId" not in node):
        return ["goal", "tag"]
    if path == ["early_stopping"]:
        return sorted(_EARLY_STOPPING)
    if path[0] == "parameters" and len(path) % 2 == 0 and all(_is_index(p) for p in path[1::2]) \
            and all(p == "children" for p in path[2::2]) and "parameterId" not in node:
        return sorted(_NATIVE_PARAM_KEYS)
    return None
