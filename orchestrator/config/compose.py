"""Composition of the experiment config with tfscale's error messages.

Hydra and OmegaConf raise several unrelated exception types for a bad option, key or value; they are turned
here into one :class:`ConfigError` naming the key, the value and the fix, with the closest valid name.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence

from orchestrator.errors import ConfigError

#: The config groups shipped with tfscale.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def _schema_keys(path: Sequence[str]) -> Optional[List[str]]:
    """Field names of the schema node at ``path`` (e.g. ['trainer']), or None if not a dataclass node."""
    from orchestrator.config.schema import ExperimentConfig

    node: Any = ExperimentConfig
    for part in path:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return None
        f = fields[part]
        node = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.type
        if isinstance(node, str):
            import orchestrator.config.schema as schema_mod

            node = getattr(schema_mod, node, None)
        if node is not None and not isinstance(node, type) and dataclasses.is_dataclass(node):
            node = type(node)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else None


def _schema_choices(path: Sequence[str]) -> Optional[List[str]]:
    """The valid values of the field at ``path`` if the schema declares it a :class:`Choice` enum, else None."""
    import typing

    from orchestrator.config.schema import Choice, ExperimentConfig

    node: Any = ExperimentConfig
    for part in path:
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None
        hint = typing.get_type_hints(node).get(part)
        if hint is None:
            return None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        node = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint  # Optional[X] -> X
    return node.values() if isinstance(node, type) and issubclass(node, Choice) else None


def _schema_is_dict(path: Sequence[str]) -> bool:
    """Whether the schema declares the field at ``path`` a ``Dict[...]`` (e.g. ``cluster.spec``)."""
    import typing

    from orchestrator.config.schema import ExperimentConfig

    node: Any = ExperimentConfig
    hint: Any = None
    for part in path:
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return False
        hint = typing.get_type_hints(node).get(part)
        if hint is None:
            return False
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        node = hint = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
    return typing.get_origin(hint) in (dict, typing.Dict) or hint in (dict, typing.Dict)


def normalize_overrides(overrides: Sequence[str]) -> List[str]:
    """The overrides with ``key={...}`` on a dict field of the schema turned into ``+key={...}``.

    Hydra composes in struct mode, where ``cluster.spec={worker: [...]}`` cannot add the key ``worker`` to the
    empty ``spec`` of ``cluster=none`` (Hydra's "Could not override"); ``+`` merges the dict in as the user
    meant. The README's own ``cluster.spec={...}`` form thus works on every cluster option.
    """
    out = []
    for ov in overrides:
        key, eq, value = ov.partition("=")
        if eq and value.lstrip().startswith("{") and key and key[0] not in "+~" and _schema_is_dict(key.split(".")):
            ov = "+" + ov
        out.append(ov)
    return out


def _unparsable(overrides: Sequence[str], exc: Exception) -> ConfigError:
    """A ConfigError for the first override Hydra's grammar rejects, with the quoting hint it needs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for ov in overrides:
        try:
            parser.parse_overrides([ov])
        except Exception:  # this is the one
            key, _, value = ov.partition("=")
            key = key.lstrip("+~")
            if any(ord(c) > 127 for c in value):
                return ConfigError(key, value, "Hydra's override grammar reads characters outside ASCII only inside quotes: "
                                   f"write {key}=\"{value}\" (in a shell, quote the whole word: '{key}=\"{value}\"').")
            hydra_says = " ".join(str(exc).split()).split(" See https://")[0]
            return ConfigError(key, value, f"Hydra cannot parse this override ({hydra_says}). Quote a value holding spaces, "
                               f"commas, brackets or other special characters: {key}='...' (in a shell: \"{key}='...'\").")
    return ConfigError("overrides", list(overrides), " ".join(str(exc).split()))


def _override_value(overrides: Sequence[str], key: str) -> Any:
    for ov in overrides:
        k, _, v = ov.lstrip("+~").partition("=")
        if k == key:
            return v
    from orchestrator.errors import MISSING_VALUE

    return MISSING_VALUE


def _undeclared_study_key(cause: Any, parts: List[str], value: Any) -> Optional[ConfigError]:
    """The error for a ``study.*`` key the study file does not declare: the study node is untyped, so Hydra
    knows only the declared keys; this names the keys the study accepts there, with the closest one."""
    from omegaconf import DictConfig, OmegaConf

    from orchestrator.config.study_keys import study_fields
    from orchestrator.errors import MISSING_VALUE

    parent = getattr(cause, "parent_node", None)
    node = OmegaConf.to_container(parent, resolve=False) if isinstance(parent, DictConfig) else {}
    fields = study_fields(parts[1:-1], node if isinstance(node, dict) else {})
    if fields is None:
        return None
    key, full_key = parts[-1], ".".join(parts)
    shown = "" if value is MISSING_VALUE else f"={value}"
    prefix = ".".join(parts[:-1])
    if key in fields:
        return ConfigError(full_key, value, f"'{key}' is a study key this study file does not set; add it with "
                                            f"+{full_key}{shown} (or set it in the study file).")
    near = difflib.get_close_matches(key, fields, n=1)
    hint = ""
    if near:
        declared = near[0] in (node or {})
        hint = (f"Did you mean {prefix}.{near[0]}{shown}? " if declared else
                f"Did you mean +{prefix}.{near[0]}{shown} (the study file does not set it, hence the +)? ")
    return ConfigError(full_key, value, f"'{key}' is not a key of {prefix}. {hint}Valid keys: {', '.join(fields)}.")


def translate_compose_error(exc: Exception, overrides: Sequence[str]) -> ConfigError:
    """Turn a Hydra/OmegaConf composition error into a ConfigError naming key, value and fix."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    from orchestrator.errors import MISSING_VALUE

    if isinstance(exc, OverrideParseException):
        return _unparsable(overrides, exc)

    if isinstance(exc, MissingConfigException):
        text = str(exc)
        m = re.search(r"Could not find '([^']+)'", text)
        missing = m.group(1) if m else (exc.missing_cfg_file or "?")
        group, _, option = missing.rpartition("/")
        options = [o for o in (exc.options or []) if o != "tfscale_schema"]
        if group and options:
            near = difflib.get_close_matches(option, options, n=1)
            hint = f" Did you mean {group}={near[0]}?" if near else ""
            return ConfigError(group, option, f"'{option}' is not an option of the '{group}' group. Choose one of: {', '.join(options)}.{hint}")
        return ConfigError(missing, None, text.strip().replace("\n", " "))
    cause: Optional[BaseException] = exc
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__  # Hydra re-raises some OmegaConf errors without "from"
    if isinstance(cause, OmegaConfBaseException):
        full_key = getattr(cause, "full_key", None) or ""
        m = re.search(r"override '([^']+)'", str(exc))
        if m and not full_key:
            full_key = m.group(1)
        value = _override_value(overrides, full_key)
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            parts = full_key.split(".")
            keys = _schema_keys(parts[:-1]) if len(parts) > 1 else _schema_keys([])
            where = ".".join(parts[:-1]) or "the root config"
            if parts[0] == "study" and len(parts) > 1:
                # OmegaConf writes list items as key[0]; the command line says key.0.
                dotted = re.sub(r"\[(\d+)\]", r".\1", full_key)
                if value is MISSING_VALUE:
                    value = _override_value(overrides, dotted)
                study_error = _undeclared_study_key(cause, dotted.split("."), value)
                if study_error is not None:
                    return study_error
            if keys is not None:
                near = difflib.get_close_matches(parts[-1], keys, n=1)
                hint = f"Did you mean '{'.'.join(parts[:-1] + [near[0]])}'? " if near else ""
                return ConfigError(full_key, value, f"'{parts[-1]}' is not a key of {where}. {hint}Valid keys: {', '.join(keys)}.")
            return ConfigError(full_key, value, f"'{parts[-1]}' is not a key of {where}. Check the spelling; to add a new key to an untyped node use +{full_key}=...")
        if isinstance(cause, ValidationError):
            choices = _schema_choices(full_key.split("."))
            if choices is not None:  # a Choice enum field: list its values, not OmegaConf's wording
                if value is MISSING_VALUE:
                    value = getattr(cause, "value", value)
                near = difflib.get_close_matches(str(value), choices, n=1)
                hint = f" Did you mean {full_key}={near[0]}?" if near else ""
                return ConfigError(full_key, value, f"Use one of: {', '.join(choices)}.{hint}")
            msg = str(cause).splitlines()[0]
            return ConfigError(full_key, value, f"{msg}. Give a value of the type the schema declares (see `tfscale --cfg job`).")
        return ConfigError(full_key or "config", value, str(cause).splitlines()[0])
    return ConfigError("overrides", list(overrides), str(exc).strip().replace("\n", " "))


def compose(overrides: Sequence[str], config_dir: Optional[str] = None, config_name: str = "config", *,
            return_hydra_config: bool = False) -> Any:
    """Compose the experiment config as ``tfscale`` would (raises ConfigError on composition errors).

    ``return_hydra_config``: keep the ``hydra`` node (e.g. to see which launcher a sweep selects)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from orchestrator.config.schema import register_configs

    register_configs()
    overrides = normalize_overrides(overrides)
    extra = list(overrides)
    if config_dir:
        extra.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=extra, return_hydra_config=return_hydra_config)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra and OmegaConf raise several unrelated types
        raise translate_compose_error(exc, overrides) from exc
    finally:
        GlobalHydra.instance().clear()
