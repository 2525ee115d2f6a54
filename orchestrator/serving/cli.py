"""``tfscale serve`` and ``tfscale rollback``.

Both take overrides of the ``serving`` config group, Hydra style (``conf/serving/<option>.yaml`` merged into
:class:`~orchestrator.config.serving.ServingConfig`, then ``key=value`` overrides)::

    tfscale serve serving.model_base=models                      # every model of models/models.config
    tfscale serve serving.model_base=models serving.model_name=digits_mlp serving.rest_port=8501
    tfscale serve serving=batching serving.batching.max_batch_size=64 serving.host=0.0.0.0
    tfscale serve serving.grpc_tls_cert=cert.pem serving.grpc_tls_key=key.pem
    python -m orchestrator.serving serving.model_base=models     # the same without the tfscale entry point

``serving=<option>`` picks the option file (default: ``default``); the ``serving.`` prefix of other
overrides may be left out.

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
import logging
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

from orchestrator.errors import ConfigError, TfscaleError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def load_serving_config(overrides: List[str]) -> Any:
    """Compose ``serving``: the schema, the chosen ``conf/serving`` option, then the overrides; validated."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from orchestrator.config.serving import ServingConfig, check_serving

    option = "default"
    dotlist = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(item, None, "Overrides look like serving.rest_port=8501 (see tfscale serve --help).")
        key = key.lstrip("+")
        if key == "serving":
            option = value
            continue
        dotlist.append(f"{key[len('serving.'):] if key.startswith('serving.') else key}={value}")
    cfg = OmegaConf.structured(ServingConfig)
    if (CONF_DIR / "serving" / f"{option}.yaml").exists():
        cfg = OmegaConf.merge(cfg, _load_option(option))
    elif option != "default":
        choices = sorted(p.stem for p in (CONF_DIR / "serving").glob("*.yaml"))
        raise ConfigError("serving", option, f"Use one of: {', '.join(choices)}.")
    for item in dotlist:
        key = item.partition("=")[0]
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise ConfigError(f"serving.{key}", item.partition("=")[2],
                              f"{str(e).splitlines()[0]}. See the keys of conf/serving/default.yaml.") from None
    check_serving(cfg)
    return cfg


def _load_option(option: str) -> Any:
    """One ``conf/serving`` option with its own defaults list applied (options of the same group only)."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF_DIR / "serving" / f"{option}.yaml")
    defaults = node.pop("defaults", None) or ["_self_"]
    merged = OmegaConf.create()
    for item in defaults:
        merged = OmegaConf.merge(merged, node if item == "_self_" else _load_option(str(item)))
    if "_self_" not in defaults:
        merged = OmegaConf.merge(merged, node)
    return merged


def _usage(parser: argparse.ArgumentParser) -> str:
    return parser.format_help() + "\n" + (__doc__ or "")


def main(argv: Optional[List[str]] = None) -> int:
    """``tfscale serve [serving overrides]``: run the embedded server until SIGINT/SIGTERM."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tfscale serve", description="TF-Serving-compatible REST + gRPC server "
                                     "over a model repository.", add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--cfg", action="store_true", help="print the composed serving config and exit")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.help:
        print(_usage(parser))
        return 0
    try:
        s = load_serving_config(args.overrides)
        if args.cfg:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(s, resolve=True))
            return 0
        logging.basicConfig(level=getattr(logging, str(s.log_level).upper(), logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from orchestrator.serving.server import EmbeddedServer

        server = EmbeddedServer(s).start()
        try:
            server.wait()
        finally:
            server.stop()
        return 0
    except TfscaleError as e:
        print(f"tfscale serve: {e}", file=sys.stderr)
        return e.exit_code


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
