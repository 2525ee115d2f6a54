"""``deploy=tfjs``: the published SavedModel as a TF.js graph model, for browsers and Node.js.

The conversion runs the external ``tensorflowjs_converter`` named by ``deploy.tfjs.converter``:
tensorflowjs 4.22 pins TensorFlow 2.19 (through tensorflow-decision-forests), so it cannot share
tfscale's environment and is installed in a virtualenv of its own::

    python -m venv ~/.venvs/tfjs && ~/.venvs/tfjs/bin/pip install tensorflowjs 'ydf<0.13'
    tfscale deploy=tfjs deploy.tfjs.converter=$HOME/.venvs/tfjs/bin/tensorflowjs_converter

``ydf<0.13``: newer ydf releases are built against protobuf 6, which TensorFlow 2.19 does not allow,
and the converter then fails at import. On the command line the shell expands ``$HOME``; Hydra's
override grammar rejects an unquoted ``~``. In a YAML file ``~/.venvs/...`` works: it is expanded here.

Output: ``<deploy.tfjs.output_base>/<export.model_name>/<NNNN>/`` (``model.json`` and weight shards),
numbered like the SavedModel version it was converted from. It is written into a hidden temporary
directory beside it and published by :mod:`orchestrator.artifacts.publish` (fsynced, readable by all,
renamed into place), so a web server never sees half a model. It is kept out of
``export.model_base`` on purpose: a model server loads every numbered directory there as a SavedModel.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

from orchestrator.artifacts import publish, storage
from orchestrator.config.schema import TfjsQuantize
from orchestrator.deploy.base import DeployTarget
from orchestrator.errors import ConfigError, TaskFailedError
from orchestrator.runtime import supervisor

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig, TfjsDeployConfig

log = logging.getLogger(__name__)

INSTALL_HINT = ("tensorflowjs pins its own TensorFlow, so install it in a separate environment: "
                "`python -m venv ~/.venvs/tfjs && ~/.venvs/tfjs/bin/pip install tensorflowjs 'ydf<0.13'`, then pass "
                "deploy.tfjs.converter=$HOME/.venvs/tfjs/bin/tensorflowjs_converter (or put that path in your config).")


def converter_command(converter: str) -> List[str]:
    """``deploy.tfjs.converter`` as an argument list with its program resolved; ConfigError if missing."""
    words = shlex.split(converter or "")
    if not words:
        raise ConfigError("deploy.tfjs.converter", converter, f"Name the tensorflowjs_converter command. {INSTALL_HINT}")
    program = os.path.expanduser(words[0])
    if os.sep in program:
        found = program if os.path.isfile(program) and os.access(program, os.X_OK) else None
    else:
        found = shutil.which(program)
    if found is None:
        raise ConfigError("deploy.tfjs.converter", converter, f"{program} was not found or is not executable. {INSTALL_HINT}")
    return [found, *(os.path.expanduser(w) for w in words[1:])]


def conversion_args(d: TfjsDeployConfig, saved_model_dir: Path, output_dir: Path) -> List[str]:
    """Arguments after the converter program that turn ``saved_model_dir`` into a graph model in ``output_dir``."""
    args = ["--input_format=tf_saved_model", "--output_format=tfjs_graph_model",
            "--signature_name=serving_default", "--saved_model_tags=serve",
            f"--weight_shard_size_bytes={d.weight_shard_size_bytes}"]
    if d.quantize != TfjsQuantize.none:
        # '=*' keeps the optional value attached: a bare flag would swallow the input path as its value.
        args.append(f"--quantize_{d.quantize}=*")
    args += [str(a) for a in d.extra_args]
    return args + [str(saved_model_dir), str(output_dir)]


def unsupported_ops(output: str) -> List[str]:
    """The ops ``tensorflowjs_converter`` lists as unsupported (``Unsupported Ops in the model before
    optimization\nCos, Erfinv``), or [] when its output says nothing of the kind."""
    import re

    m = re.search(r"Unsupported Ops in the model(?: (?:before|after) optimization)?:?\s*\n?\s*([^\n']+)", output)
    return [op.strip() for op in m.group(1).split(",") if op.strip()] if m else []


def check_convertible(cfg: ExperimentConfig, saved_model_dir: Path, work_dir: Path) -> None:
    """Convert ``saved_model_dir`` (the untrained model, saved like a version) as ``deploy=tfjs`` would, into
    ``work_dir``, and remove the result: before training, ops TF.js lacks are a ConfigError naming them."""
    d = cfg.deploy.tfjs
    out = Path(work_dir) / "tfjs"
    out.mkdir(parents=True, exist_ok=True)  # as deploy() gives it its staging directory
    command = converter_command(d.converter) + conversion_args(d, Path(saved_model_dir), out)
    try:
        try:
            proc = supervisor.run(command, timeout=float(d.timeout_s))
        except supervisor.TimeoutExpired as exc:
            raise TaskFailedError(f"tensorflowjs_converter did not convert the untrained model within "
                                  f"deploy.tfjs.timeout_s={d.timeout_s}s.") from exc
        ops = unsupported_ops(proc.stdout + "\n" + proc.stderr)
        if ops:
            raise ConfigError("deploy.target", "tfjs", "Replace the layers that use them, or publish without TF.js "
                              "(deploy=none).", problem=f"TF.js has no kernel for op(s) {', '.join(ops)} of this model")
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-1:])[:300]
            raise TaskFailedError(f"tensorflowjs_converter ({d.converter}) exited with {proc.returncode} converting the "
                                  f"untrained model before training: {tail}")
    finally:
        shutil.rmtree(out, ignore_errors=True)


class TfjsTarget(DeployTarget):
    """Converts the published version with ``tensorflowjs_converter`` and publishes the graph model."""

    name = "tfjs"

    def check(self, cfg: ExperimentConfig) -> None:
        d = cfg.deploy.tfjs
        if not cfg.export.enabled:
            raise ConfigError("export.enabled", False, "deploy=tfjs converts the exported SavedModel; use export=saved_model.")
        if d.weight_shard_size_bytes < 1:
            raise ConfigError("deploy.tfjs.weight_shard_size_bytes", d.weight_shard_size_bytes, "Use a positive size, e.g. 4194304 (4 MiB).")
        if not d.output_base:
            raise ConfigError("deploy.tfjs.output_base", d.output_base, "Name the directory TF.js models are published under, e.g. web_models.")
        if Path(d.output_base).resolve() == Path(cfg.export.model_base).resolve():
            raise ConfigError("deploy.tfjs.output_base", d.output_base,
                              "A model server loads every numbered directory under export.model_base as a SavedModel; "
                              "publish TF.js models elsewhere, e.g. deploy.tfjs.output_base=web_models.")
        converter_command(d.converter)

    def deploy(self, cfg: ExperimentConfig, version_dir: Path, run_dir: Path) -> Dict[str, Any]:
        d = cfg.deploy.tfjs
        version_name = storage.split(version_dir)[1]
        out_parent = storage.join(d.output_base, str(cfg.export.model_name))
        target = storage.join(out_parent, version_name)
        tmp = publish.staging_directory(out_parent, hint=version_name)
        local_version = None
        if storage.is_remote(version_dir):  # the converter reads a local SavedModel
            local_version = Path(tempfile.mkdtemp(prefix=f".tmp-saved-model-{version_name}-"))
            storage.download_dir(version_dir, local_version)
        source = local_version or Path(version_dir).resolve()
        command = converter_command(d.converter) + conversion_args(d, source, tmp)
        log.info("tfjs: %s", shlex.join(command))
        try:
            try:
                proc = supervisor.run(command, timeout=float(d.timeout_s))
            except supervisor.TimeoutExpired as exc:
                raise TaskFailedError(f"tensorflowjs_converter did not finish within deploy.tfjs.timeout_s={d.timeout_s}s.") from exc
            (Path(run_dir) / "tfjs_converter.log").write_text(f"$ {shlex.join(command)}\n{proc.stdout}\n{proc.stderr}")
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                raise TaskFailedError(f"tensorflowjs_converter exited with {proc.returncode} converting {version_dir}:\n{tail}\n"
                                      f"Full log: {Path(run_dir) / 'tfjs_converter.log'}")
            if not (tmp / "model.json").is_file():
                raise TaskFailedError(f"tensorflowjs_converter wrote no model.json for {version_dir}; see {Path(run_dir) / 'tfjs_converter.log'}.")
            try:
                publish.publish_staged(tmp, out_parent, name=version_name)
            except OSError as exc:
                raise TaskFailedError(f"Could not publish {target}: {exc}. Is an older TF.js model with this number "
                                      f"in {out_parent}? Move it away or choose another deploy.tfjs.output_base.") from exc
        except BaseException:
            publish.discard(tmp)
            raise
        finally:
            if local_version is not None:
                publish.discard(local_version)
        if storage.is_remote(target):
            files = sorted(storage.listdir(target))
            fs, root = storage.filesystem(target)
            size = sum(int(fs.info(f"{root}/{f}").get("size", 0)) for f in files)
        else:
            files = sorted(p.name for p in Path(target).iterdir())
            size = sum((Path(target) / f).stat().st_size for f in files)
        return {"target": "tfjs", "path": str(target), "files": files, "bytes": size, "command": command}
