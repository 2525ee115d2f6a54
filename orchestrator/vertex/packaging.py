"""The project as a source distribution, staged where Vertex's training image can ``pip install`` it."""
from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import TaskFailedError
from orchestrator.runtime import supervisor

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_SOURCES = ("orchestrator", "strategies", "tuners", "hydra_plugins", "conf", "pyproject.toml", "README.md", "MANIFEST.in")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")


def project_version() -> str:
    """Version of the installed tfscale distribution (the sdist carries the same)."""
    try:
        return metadata.version("tfscale")
    except metadata.PackageNotFoundError:
        return "0.1.0"


def sdist_name() -> str:
    """File name setuptools gives the sdist."""
    return f"tfscale-{project_version()}.tar.gz"


def staging_dir(cfg: ExperimentConfig) -> str:
    """Where packages are staged: ``vertex.staging_dir`` or ``gs://<bucket>/tfscale/staging``."""
    return (cfg.vertex.staging_dir or f"gs://{cfg.vertex.bucket}/tfscale/staging").rstrip("/")


def package_uri(cfg: ExperimentConfig, display_name: str) -> str:
    """The URI the job's package is staged at (one folder per job, so reruns never overwrite a running job's code)."""
    return f"{staging_dir(cfg)}/{display_name}/{sdist_name()}"


def build_sdist(out_dir: Path) -> Path:
    """Build an sdist of the project into ``out_dir``.

    The build runs on a copy, so the working tree gets no ``egg-info`` or ``build`` folders; the copy's
    manifest adds ``conf/`` because the task composes its config from it.
    """
    with tempfile.TemporaryDirectory(prefix="tfscale-sdist-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in _SOURCES:
            path = PROJECT_ROOT / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=_IGNORE)
            elif path.exists():
                shutil.copy2(path, src / name)
        with open(src / "MANIFEST.in", "a") as manifest:
            manifest.write("\nrecursive-include conf *.yaml\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
        proc = supervisor.run([sys.executable, "-c", code, str(out_dir.resolve())], cwd=src)
        if proc.returncode != 0:
            raise TaskFailedError(f"Building the sdist of the project failed:\n{proc.stderr[-2000:]}")
        return out_dir / proc.stdout.strip().splitlines()[-1]


def stage(local: Path, uri: str) -> str:
    """Copy a file or directory to ``uri``: ``gs://bucket/path`` through google-cloud-storage, else a local path."""
    if uri.startswith("gs://"):
        from google.cloud import storage

        bucket_name, _, prefix = uri[len("gs://"):].partition("/")
        bucket = storage.Client().bucket(bucket_name)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for path in files:
            name = prefix if local.is_file() else f"{prefix}/{path.relative_to(local).as_posix()}"
            bucket.blob(name).upload_from_filename(str(path))
        return uri
    dest = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if local.is_dir():
        shutil.copytree(local, dest, dirs_exist_ok=True)
    else:
        shutil.copy2(local, dest)
    return uri


def build_and_stage(cfg: ExperimentConfig, display_name: str, work_dir: Path) -> str:
    """Build the sdist and stage it at :func:`package_uri`; return that URI."""
    built = build_sdist(work_dir / "dist")
    return stage(built, package_uri(cfg, display_name))
