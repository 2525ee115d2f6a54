"""``tfscale serve`` and ``tfscale rollback``.

``tfscale serve`` composes its config with Hydra like every other tfscale command: the ``serving`` group of
the root config (``conf/serving/<option>.yaml`` merged into :class:`~orchestrator.config.serving.ServingConfig`)
with ``serving=<option>``, ``key=value``, ``+key=value`` and ``~key`` overrides, ``-cd DIR`` for a directory of
your own config groups, and "did you mean" for a misspelt key. The ``serving.`` prefix may be left out::

    tfscale serve serving.model_base=models                      # every model of models/models.config
    tfscale serve serving.model_base=models serving.model_name=digits_mlp serving.rest_port=8501
    tfscale serve serving=batching serving.batching.max_batch_size=64 serving.host=0.0.0.0
    tfscale serve -cd my_conf serving=prod                       # my_conf/serving/prod.yaml
    tfscale serve serving.grpc_tls_cert=cert.pem serving.grpc_tls_key=key.pem
    tfscale serve serving.engine=ray serving.replicas=2 serving.model_base=gs://bucket/models   # Ray Serve replicas
    python -m orchestrator.serving serving.model_base=models     # the same without the tfscale entry point

It also takes ``tensorflow_model_server``'s flags, so a TF Serving command line runs with the binary's name
replaced (see :mod:`orchestrator.serving.model_server_flags`)::

    tfscale serve --port=8500 --rest_api_port=8501 --model_name=digits --model_base_path=/models/digits
    tfscale serve --port 8500 --rest_api_port 8501 --model_config_file /models/models.config \\
        --enable_batching --batching_parameters_file /models/batching_parameters.config \\
        --monitoring_config_file /models/monitoring.config --ssl_config_file /models/ssl.config

Flags are applied after the overrides. ``--cfg`` prints the composed ``serving`` config and exits.

``tfscale rollback`` edits the repository so that a running server (which re-reads models.config and
rescans version directories every ``file_system_poll_wait_seconds``) moves traffic without a restart::

    tfscale rollback serving.model_base=models --model digits_mlp                  # 'stable' -> the version below it
    tfscale rollback serving.model_base=models --model digits_mlp --to 3           # 'stable' -> 3
    tfscale rollback serving.model_base=models --model digits_mlp --label canary --to 4
    tfscale rollback serving.model_base=models --model digits_mlp --pin 3          # serve only version 3
    tfscale rollback serving.model_base=models --model digits_mlp --unpin          # back to serving.version_policy
    tfscale rollback serving.model_base=models --model digits_mlp --remove 4       # take a bad version out

``--remove`` renames ``<model>/<NNNN>`` to a hidden ``.removed-<NNNN>-<time>`` sibling (ignored by servers,
restorable by renaming it back); labels that pointed at it move to the highest remaining version below it.
Label and pin changes are written to ``models.config`` (created from the model directory if missing).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from orchestrator.errors import ConfigError, TfscaleError
from orchestrator.serving.model_server_flags import ModelServerFlags, take

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

_CONFIG_FLAGS = {"-cd": "config_dir", "--config-dir": "config_dir", "-cn": "config_name", "--config-name": "config_name"}
_CFG_WHAT = ("job", "all", "hydra")  # Hydra's --cfg takes one of these; tfscale serve prints the serving config


@dataclasses.dataclass
class ServeArgs:
    """A ``tfscale serve`` command line, split into its parts."""

    overrides: List[str] = dataclasses.field(default_factory=list)
    flags: ModelServerFlags = dataclasses.field(default_factory=ModelServerFlags)
    config_dir: Optional[str] = None
    config_name: str = "config"
    show_cfg: bool = False
    help: bool = False


def parse_serve_args(argv: Sequence[str]) -> ServeArgs:
    """Separate Hydra's flags, ``tensorflow_model_server``'s flags and the overrides; ConfigError on a bad flag."""
    args = ServeArgs()
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        if token in ("-h", "--help"):
            args.help, i = True, i + 1
        elif name in ("--cfg", "-c"):
            args.show_cfg = True
            i += 1 if eq or not (i + 1 < len(argv) and argv[i + 1] in _CFG_WHAT) else 2
        elif name in _CONFIG_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(name, None, f"It needs a value: {name} DIR.")
                value, i = argv[i + 1], i + 1
            setattr(args, _CONFIG_FLAGS[name], value)
            i += 1
        elif token.startswith("-") and len(token) > 1:
            flag, raw, i = take(argv, i)
            args.flags.values[flag] = raw
        else:
            args.overrides.append(token)
            i += 1
    return args


def _root_keys() -> set:
    from orchestrator.config.schema import ExperimentConfig

    return {f.name for f in dataclasses.fields(ExperimentConfig)} | {"hydra"}


def _qualify(item: str, root: set) -> str:
    """``rest_port=1`` -> ``serving.rest_port=1`` (and ``+``/``~`` forms): keys outside the root config are serving's."""
    prefix = item[:len(item) - len(item.lstrip("+~"))]
    body = item[len(prefix):]
    key = body.partition("=")[0]
    if "=" not in body and not prefix.startswith("~"):
        raise ConfigError(item, None, "Overrides look like serving.rest_port=8501 and flags like --port=8500 "
                          "(see tfscale serve --help).")
    if key.split(".")[0].split("/")[0] in root:
        return item
    return f"{prefix}serving.{body}"


def load_serving_config(overrides: Sequence[str], config_dir: Optional[str] = None, config_name: str = "config",
                        flags: Optional[ModelServerFlags] = None) -> Any:
    """The ``serving`` node of the root config composed with ``overrides``, ``flags`` applied, validated.

    Composition errors (unknown option or key, with the closest valid name; a value of the wrong type) and
    invalid values are :class:`ConfigError`; nothing here imports TensorFlow.
    """
    import difflib

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from orchestrator.config.compose import _schema_keys as schema_keys
    from orchestrator.config.compose import compose
    from orchestrator.config.serving import ServingConfig, check_serving

    if config_dir and not Path(config_dir).is_dir():
        raise ConfigError("--config-dir", config_dir, f"No such directory ({Path(config_dir).resolve()}); give a "
                          "directory of config groups, e.g. one with serving/<option>.yaml.")
    root = _root_keys()
    qualified = [_qualify(o, root) for o in overrides]
    cfg = compose(qualified, config_dir, config_name)
    # Resolved while still attached to the root (model_base follows export.model_base), then typed on its own.
    resolved = OmegaConf.to_container(cfg.serving, resolve=True)
    try:
        s = OmegaConf.merge(OmegaConf.structured(ServingConfig), resolved)
    except OmegaConfBaseException as e:  # a key added with +serving.<key>=... that the schema does not have
        key = str(getattr(e, "full_key", "") or getattr(e, "key", "") or "?")
        parts = key.split(".")
        near = difflib.get_close_matches(parts[-1], schema_keys(["serving", *parts[:-1]]) or [], n=1)
        hint = f" Did you mean serving.{'.'.join(parts[:-1] + [near[0]])}?" if near else ""
        raise ConfigError(f"serving.{key}", OmegaConf.select(OmegaConf.create(resolved), key),
                          f"'{parts[-1]}' is not a key of the serving schema.{hint} See `tfscale serve --cfg`.") from None
    if flags:
        host_given = any(q.lstrip("+~").partition("=")[0] == "serving.host" for q in qualified)
        flags.apply(s, host_given)
    check_serving(s)
    return s


def _usage() -> str:
    from orchestrator.serving.model_server_flags import FLAGS

    return ("usage: tfscale serve [-cd DIR] [--cfg] [serving overrides] [tensorflow_model_server flags]\n\n"
            "TF-Serving-compatible REST + gRPC server over a model repository.\n\n"
            "tensorflow_model_server flags: " + ", ".join(f"--{f}" for f in FLAGS) + "\n\n" + (__doc__ or ""))


def main(argv: Optional[List[str]] = None, engines: Optional[Mapping[str, Callable[[Any], Any]]] = None) -> int:
    """``tfscale serve``: compose the serving config, then run the server until SIGINT/SIGTERM.

    ``engines`` maps other ``serving.engine`` values than ``embedded`` to a server factory (its result has
    ``start``/``wait``/``stop``); they live above this layer, and ``tfscale serve`` passes ``ray``
    (:mod:`orchestrator.launch.ray_serve`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    flags: Optional[ModelServerFlags] = None
    try:
        args = parse_serve_args(argv)
        if args.help:
            print(_usage())
            return 0
        flags = args.flags
        s = load_serving_config(args.overrides, args.config_dir, args.config_name, flags)
        if args.show_cfg:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(s, resolve=True))
            return 0
        logging.basicConfig(level=getattr(logging, str(s.log_level).upper(), logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for note in flags.notes:
            logging.getLogger("tfscale.serving").info("%s", note)
        server = _server_factory(s, engines)(s).start()
        flags.close()  # the gRPC server holds its TLS material in memory now
        try:
            server.wait()
        finally:
            server.stop()
        return 0
    except TfscaleError as e:
        print(f"tfscale serve: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if flags is not None:
            flags.close()


def _server_factory(s: Any, engines: Optional[Mapping[str, Callable[[Any], Any]]]) -> Callable[[Any], Any]:
    if s.engine == "embedded":
        from orchestrator.serving.server import EmbeddedServer

        return EmbeddedServer
    if engines and s.engine in engines:
        return engines[s.engine]
    raise ConfigError("serving.engine", s.engine, "This entry point runs the embedded server only; start "
                      f"serving.engine={s.engine} with `tfscale serve`.")


# ------------------------------------------------------------------------------------------- rollback
def _config_path(s: Any) -> Path:
    from orchestrator.serving.config_files import MODELS_CONFIG

    return Path(s.model_config_file) if s.model_config_file else Path(s.model_base) / MODELS_CONFIG


def _entry_for(s: Any, model: str) -> Tuple[Path, List[Any], Any]:
    """The models.config path, all its entries, and the entry of ``model`` (made from the directory if absent)."""
    from orchestrator.serving.config_files import read_models_config
    from orchestrator.serving.repository import ModelEntry
    from orchestrator.serving.server import policy_of

    path = _config_path(s)
    entries = read_models_config(path)
    for e in entries:
        if e.name == model:
            return path, entries, e
    model_dir = (Path(s.model_base) / model).resolve()
    if not model_dir.is_dir():
        raise ConfigError("--model", model, f"No model directory {model_dir} and no entry in {path}; check serving.model_base.")
    entry = ModelEntry(model, str(model_dir), policy_of(s.version_policy),
                       {str(k): int(v) for k, v in dict(s.version_labels).items()})
    entries.append(entry)
    return path, entries, entry


def rollback_main(argv: Optional[List[str]] = None) -> int:
    """``tfscale rollback``: move a label, pin/unpin a version, or take a bad version out of the repository."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tfscale rollback", description="Move serving traffic between model versions.")
    parser.add_argument("--model", required=True, help="model name (directory under serving.model_base)")
    parser.add_argument("--label", default="stable", help="label to move (default: stable)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--to", type=int, help="point the label at this version")
    action.add_argument("--pin", type=int, help="serve only this version (version policy specific)")
    action.add_argument("--unpin", action="store_true", help="restore serving.version_policy")
    action.add_argument("--remove", type=int, help="move this version directory aside (servers roll back)")
    parser.add_argument("overrides", nargs="*", help="serving overrides, e.g. serving.model_base=models")
    args = parser.parse_args(argv)
    try:
        s = load_serving_config(args.overrides)
        print(_rollback(s, args))
        return 0
    except TfscaleError as e:
        print(f"tfscale rollback: {e}", file=sys.stderr)
        return e.exit_code


def _rollback(s: Any, args: argparse.Namespace) -> str:
    from dataclasses import replace

    from orchestrator.serving.config_files import write_models_config
    from orchestrator.serving.repository import VersionPolicy, version_dirs
    from orchestrator.serving.server import policy_of

    if args.remove is not None:
        return remove_version(Path(s.model_base), args.model, args.remove, _config_path(s))
    path, entries, entry = _entry_for(s, args.model)
    published = version_dirs(entry.base_path)
    if args.pin is not None or args.to is not None:
        wanted = args.pin if args.pin is not None else args.to
        if wanted not in published:
            raise ConfigError("--pin" if args.pin is not None else "--to", wanted,
                              f"Model {args.model} has versions {sorted(published)}; choose one of them.")
    if args.pin is not None:
        new = replace(entry, policy=VersionPolicy("specific", versions=(args.pin,)))
        what = f"{args.model}: pinned to version {args.pin} (policy specific)"
    elif args.unpin:
        new = replace(entry, policy=policy_of(s.version_policy))
        what = f"{args.model}: unpinned (policy {s.version_policy.policy})"
    else:
        labels = dict(entry.labels)
        if args.to is not None:
            target = args.to
        else:
            current = labels.get(args.label, max(published) if published else None)
            older = [v for v in published if current is not None and v < current]
            if not older:
                raise ConfigError("--label", args.label, f"{args.model} has no version below {current} to roll back to; "
                                  "use --to <version>.")
            target = max(older)
        before = labels.get(args.label)
        labels[args.label] = target
        new = replace(entry, labels=labels)
        what = f"{args.model}: label '{args.label}' {before if before is not None else '(unset)'} -> {target}"
    entries = sorted([e for e in entries if e.name != entry.name] + [new], key=lambda e: e.name)
    write_models_config(path, entries)
    return f"{what}; wrote {path}"


def remove_version(model_base: Path, model: str, version: int, config_path: Optional[Path] = None) -> str:
    """Move version ``version`` of ``model`` aside (a hidden sibling) and re-point labels that used it."""
    from dataclasses import replace

    from orchestrator.artifacts.publish import move_aside
    from orchestrator.serving.config_files import read_models_config, write_models_config
    from orchestrator.serving.repository import version_dirs

    model_dir = Path(model_base) / model
    published = version_dirs(model_dir)
    if version not in published:
        raise ConfigError("--remove", version, f"Model {model} has versions {sorted(published)}; choose one of them.")
    remaining = [v for v in published if v != version]
    if not remaining:
        raise ConfigError("--remove", version, f"It is the only version of {model}; publish another version first.")
    aside = model_dir / f".removed-{published[version].name}-{time.strftime('%Y%m%d-%H%M%S')}"
    move_aside(published[version], aside)
    notes = [f"{model}: version {version} moved to {aside}"]
    if config_path is not None and config_path.exists():
        entries = read_models_config(config_path)
        changed = False
        for i, e in enumerate(entries):
            if e.name != model:
                continue
            labels = dict(e.labels)
            for label, v in e.labels.items():
                if v == version:
                    below = [x for x in remaining if x < version] or remaining
                    labels[label] = max(below)
                    notes.append(f"label '{label}' -> {labels[label]}")
                    changed = True
            entries[i] = replace(e, labels=labels)
        if changed:
            write_models_config(config_path, entries)
    return "; ".join(notes)
