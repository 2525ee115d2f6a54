"""The run record: what a run was (config, overrides, provenance) and what it produced (metrics, artifacts).

Everything a run writes can be traced back to its config and commit: ``provenance.json`` holds the git
SHA and dirty flag of the directory tfscale ran from, package versions, the topology as applied and the
TF_CONFIG; each published model version carries the same record in ``assets.extra/tfscale.json``.
"""
from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

PACKAGES = ("tfscale", "tensorflow", "tf-keras", "hydra-core", "omegaconf", "numpy", "scikit-learn",
            "ray", "optuna", "tensorflow-serving-api", "ai-edge-litert", "tensorflow-model-optimization",
            "google-cloud-aiplatform")


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file + rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def git_state(cwd: Optional[Path] = None) -> Dict[str, Any]:
    """SHA, branch and dirty flag of the git checkout containing ``cwd`` (``{}`` outside git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        dirty, branch = None, None
    return {"sha": sha, "dirty": dirty, "branch": branch}


def package_versions() -> Dict[str, str]:
    """Installed versions of the packages a result depends on."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


_SECRET_KEY = re.compile(r"(secret|token|password|passwd|private_key|credential|api_key|access_key)", re.IGNORECASE)


def redact_args(args: Any) -> list:
    """Command-line words with the value of any secret-looking ``key=value`` replaced by ``<redacted>``.

    Credentials belong in Application Default Credentials, never on a command line; if one is given there
    anyway, the run record must not keep it.
    """
    out = []
    for arg in args or []:
        key, eq, _ = str(arg).partition("=")
        out.append(f"{key}=<redacted>" if eq and _SECRET_KEY.search(key) else arg)
    return out


def provenance(cfg: Any, *, topology: Optional[Dict[str, Any]] = None, overrides: Optional[list] = None) -> Dict[str, Any]:
    """Where and from what a run came: commit, packages, interpreter, host, topology, TF_CONFIG, seed."""
    tf_config = os.environ.get("TF_CONFIG")
    return {
        "git": git_state(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "command": redact_args(sys.argv),
        "overrides": redact_args(overrides),
        "seed": int(cfg.trainer.seed),
        "topology": topology,
        "tf_config": json.loads(tf_config) if tf_config else None,
    }
