"""Which Python objects a model config may name, checked before anything is imported or called.

A layer's ``_target_`` (and every nested ``_target_``, e.g. a regularizer) and ``model.builder`` name an
object that the task process imports and calls. Without a rule, ``model.layers.0._target_=os.system`` would
run a shell command. A target is therefore accepted only when its dotted path lies under one of
``model.allowed_modules`` (default ``tf_keras``) or under the package of a ``-cd`` config directory (the
user's own layers, kept next to their configs), and none of its components walks through a standard-library
module (``tf_keras.src.backend.os.system`` is ``os.system``). ``model.allow_any_target=true`` turns the rule
off for a config the user trusts.

The check runs twice: here, at validation, on the strings alone (no import, no TensorFlow); and in the task
process, on what the path resolved to (:func:`check_resolved`), which catches a re-export that the string
does not show.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

from orchestrator.errors import ConfigError

#: Standard-library modules no layer path goes through; ``sys.stdlib_module_names`` from Python 3.10.
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | {"os", "sys", "subprocess", "builtins", "shutil", "posix"}


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def config_packages(cfg: Any) -> List[str]:
    """Top-level packages holding the ``-cd`` config directories of this composition (none without ``-cd``).

    A config directory inside a Python package (``my_project/conf`` with ``my_project/__init__.py``) makes
    ``my_project`` an allowed module: a user's layers live beside their configs.
    """
    sources = None
    hydra = cfg.get("hydra") if hasattr(cfg, "get") else None
    if hydra is not None:
        sources = hydra.get("runtime", {}).get("config_sources")
    if sources is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized():
                sources = HydraConfig.get().runtime.config_sources
        except Exception:  # outside Hydra: no config directories of the user's
            sources = None
    packages: List[str] = []
    for source in sources or []:
        if source.get("provider") != "command-line" or source.get("schema") != "file":
            continue
        name = _package_of(Path(str(source.get("path"))))
        if name and name not in packages:
            packages.append(name)
    return packages


def _package_of(directory: Path) -> Optional[str]:
    """The outermost package containing ``directory`` (or its parent, when the directory holds only YAML)."""
    directory = directory.resolve()
    start = directory if (directory / "__init__.py").is_file() else directory.parent
    top = None
    d = start
    while (d / "__init__.py").is_file() and d != d.parent:
        top = d
        d = d.parent
    return top.name if top is not None and top.name.isidentifier() else None


def allowed_modules(cfg: Any) -> List[str]:
    """``model.allowed_modules`` plus the packages of the ``-cd`` config directories."""
    return [str(m) for m in cfg.model.allowed_modules] + config_packages(cfg)


def _nested_targets(node: Any, key: str) -> Iterator[Tuple[str, Any]]:
    """``(config key, target)`` of every ``_target_`` in a layer node, nested ones included."""
    if hasattr(node, "items"):
        for k, v in node.items():
            if k == "_target_":
                yield f"{key}._target_", v
            else:
                yield from _nested_targets(v, f"{key}.{k}")
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):  # a list, or OmegaConf's ListConfig
        for i, v in enumerate(node):
            yield from _nested_targets(v, f"{key}[{i}]")


def _refusal(key: str, target: str, allowed: Sequence[str]) -> Optional[ConfigError]:
    parts = target.split(".")
    through = [p for p in parts[1:-1] if p in _STDLIB]
    if any(_under(target, a) for a in allowed) and not through:
        return None
    why = (f"it reaches the standard-library module '{through[0]}' through {parts[0]}" if through
           else f"'{parts[0]}' is not in model.allowed_modules {list(allowed)}")
    return ConfigError(key, target, f"A model config names code tfscale imports and calls, so a target must come from an "
                       f"allowed module; {why}. Use a tf_keras layer (e.g. tf_keras.layers.Dense), add your own package to "
                       f"model.allowed_modules (e.g. 'model.allowed_modules=[tf_keras,my_layers]'), or, for a config you "
                       f"trust, set model.allow_any_target=true.")


def check_targets(cfg: Any) -> None:
    """Refuse a ``_target_`` or ``model.builder`` outside the allowed modules (nothing is imported)."""
    m = cfg.model
    if m.allow_any_target:
        return
    allowed = allowed_modules(cfg)
    for module in allowed:
        if not all(p.isidentifier() for p in str(module).split(".")):
            raise ConfigError("model.allowed_modules", list(m.allowed_modules),
                              f"'{module}' is not a dotted module name; list modules like tf_keras or my_project.layers.")
    if m.builder:
        module, _, fn = str(m.builder).partition(":")
        error = _refusal("model.builder", f"{module}.{fn}", allowed)
        if error is not None:
            raise ConfigError("model.builder", m.builder, error.fix)
        return
    for i, layer in enumerate(m.layers):
        for key, target in _nested_targets(layer, f"model.layers[{i}]"):
            if isinstance(target, str):
                error = _refusal(key, target, allowed)
                if error is not None:
                    raise error


def check_resolved(key: str, path: str, obj: Any, allowed: Sequence[str], walked: Sequence[Any] = ()) -> None:
    """In the task process: refuse what ``path`` resolved to when it lives outside the allowed modules.

    ``allowed``: ``model.allowed_modules`` (the path itself passed validation, so its own top-level package is
    allowed too). ``walked``: the modules and objects passed on the way, none of which may be a module outside.
    """
    import types

    ok = list(allowed) + [path.split(".")[0]]
    for step in list(walked) + [obj]:
        name = step.__name__ if isinstance(step, types.ModuleType) else getattr(step, "__module__", None)
        if isinstance(name, str) and not any(_under(name, a) for a in ok):
            raise ConfigError(key, path, f"It resolves to {name}.{getattr(step, '__qualname__', '')}".rstrip(".")
                              + f", outside the allowed modules {ok}. Name the object by a path inside them, or, for a "
                              "config you trust, set model.allow_any_target=true.")
