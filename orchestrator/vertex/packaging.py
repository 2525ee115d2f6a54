"""The project as a source distribution, staged where Vertex's training image can ``pip install`` it.

The sdist is built from wherever tfscale runs: a checkout (its ``pyproject.toml`` and package folders) or an
installed wheel (site-packages holds no ``pyproject.toml``: the distribution's own files, from its RECORD,
and a ``pyproject.toml`` written from its metadata). Either way its ``pyproject.toml`` is tfscale's own with
the ``storage`` extra among the dependencies: a replica reads and writes ``gs://`` (gcsfs), and Vertex
installs a package without extras.

The image: Vertex's prebuilt training images stop at TensorFlow 2.17 (``tf-cpu.2-17.py310``), and the
package pins TensorFlow 2.21, which pip installs over the image's own when a replica installs the package
(fine on CPU, minutes per replica; a GPU image's CUDA may not suit it). So beside the sdist tfscale writes a
``Dockerfile`` for a custom container with exactly the TensorFlow installed here (:func:`write_container`)
and says how to build it and use it (``vertex.image=...``, a ``containerSpec``).
"""
from __future__ import annotations

import re
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from orchestrator.errors import TaskFailedError
from orchestrator.runtime import supervisor

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "strategies", "tuners", "hydra_plugins", "conf")
_SOURCES = (*PACKAGES, "pyproject.toml", "README.md", "MANIFEST.in")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")
#: Extras a Vertex replica needs, installed as plain dependencies of the job's package.
JOB_EXTRAS = ("storage",)
_EXTRA = re.compile(r"""\s*extra\s*==\s*['"]([^'"]+)['"]\s*""")
_PREBUILT_TF = re.compile(r"/tf-(?:cpu|gpu)\.(\d+)-(\d+)")


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


# ------------------------------------------------------------------------------------------ sources
def is_checkout() -> bool:
    """Whether tfscale runs from a source checkout (else from an installed wheel)."""
    return (PROJECT_ROOT / "pyproject.toml").is_file()


def _project_table() -> Optional[Dict[str, Any]]:
    """The ``[project]`` table: from the checkout's pyproject.toml, else from the installed metadata."""
    if is_checkout():
        try:
            import tomllib
        except ImportError:  # Python 3.10: no TOML reader in the standard library
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                return None
        return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    meta = metadata.metadata("tfscale")
    dependencies: List[str] = []
    extras: Dict[str, List[str]] = {}
    for line in metadata.requires("tfscale") or []:
        requirement, _, marker = line.partition(";")
        found = _EXTRA.search(marker)
        if found is None:
            dependencies.append(line.strip())
            continue
        rest = _EXTRA.sub("", marker).strip().removeprefix("and ").removesuffix(" and").strip()
        extras.setdefault(found.group(1), []).append(requirement.strip() + (f"; {rest}" if rest else ""))
    scripts = {ep.name: ep.value for ep in metadata.distribution("tfscale").entry_points if ep.group == "console_scripts"}
    table: Dict[str, Any] = {"name": meta["Name"], "version": meta["Version"], "dependencies": dependencies,
                             "optional-dependencies": extras, "scripts": scripts}
    for key, field in (("requires-python", "Requires-Python"), ("description", "Summary")):
        if meta.get(field):
            table[key] = meta[field]
    return table


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pyproject_text(project: Dict[str, Any]) -> str:
    """The job package's ``pyproject.toml``: ``project`` with :data:`JOB_EXTRAS` folded into its dependencies."""
    extras = dict(project.get("optional-dependencies") or {})
    dependencies = list(project.get("dependencies") or [])
    for name in JOB_EXTRAS:
        dependencies += [d for d in extras.get(name, []) if d not in dependencies]
    lines = ["[build-system]", 'requires = ["setuptools>=61", "wheel"]', 'build-backend = "setuptools.build_meta"', "",
             "[project]"]
    for key in ("name", "version", "description", "requires-python"):
        if project.get(key):
            lines.append(f"{key} = {_toml_string(str(project[key]))}")
    lines.append("dependencies = [" + ", ".join(_toml_string(d) for d in dependencies) + "]")
    lines += ["", "[project.optional-dependencies]"]
    lines += [f"{name} = [" + ", ".join(_toml_string(d) for d in deps) + "]" for name, deps in extras.items()]
    lines += ["", "[project.scripts]"]
    lines += [f"{name} = {_toml_string(target)}" for name, target in (project.get("scripts") or {}).items()]
    lines += ["", "[tool.setuptools.packages.find]",
              "include = [" + ", ".join(_toml_string(p + "*") for p in PACKAGES) + "]", "",
              "[tool.setuptools.package-data]", '"*" = ["*.yaml"]', 'conf = ["*.yaml", "**/*.yaml"]', ""]
    return "\n".join(lines)


def _copy_installed(dest: Path) -> None:
    """The installed distribution's files of tfscale's packages (only tfscale's Hydra plugin of hydra_plugins)."""
    dist = metadata.distribution("tfscale")
    copied = 0
    for entry in dist.files or []:
        parts = entry.parts
        if not parts or parts[0] not in PACKAGES or "__pycache__" in parts or entry.suffix == ".pyc":
            continue
        if parts[0] == "hydra_plugins" and (len(parts) < 2 or parts[1] != "tfscale_sweeper"):
            continue  # site-packages' hydra_plugins holds other projects' plugins too
        source = Path(dist.locate_file(entry))
        if source.is_file():
            (dest / entry).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / entry)
            copied += 1
    if not copied:
        raise TaskFailedError("The installed tfscale distribution lists no package files (RECORD); reinstall it "
                              "(pip install tfscale) or run from a checkout.")


def build_sdist(out_dir: Path) -> Path:
    """Build an sdist of the project into ``out_dir``, from a checkout or from an installed wheel.

    The build runs on a copy, so the working tree gets no ``egg-info`` or ``build`` folders; the copy's
    manifest adds ``conf/`` because the task composes its config from it.
    """
    with tempfile.TemporaryDirectory(prefix="tfscale-sdist-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        if is_checkout():
            for name in _SOURCES:
                path = PROJECT_ROOT / name
                if path.is_dir():
                    shutil.copytree(path, src / name, ignore=_IGNORE)
                elif path.exists():
                    shutil.copy2(path, src / name)
        else:
            _copy_installed(src)
        project = _project_table()
        if project is not None:
            (src / "pyproject.toml").write_text(pyproject_text(project))
        with open(src / "MANIFEST.in", "a") as manifest:
            manifest.write("\nrecursive-include conf *.yaml\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
        proc = supervisor.run([sys.executable, "-c", code, str(out_dir.resolve())], cwd=src)
        if proc.returncode != 0:
            raise TaskFailedError(f"Building the sdist of the project failed:\n{proc.stderr[-2000:]}")
        return out_dir / proc.stdout.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------ the image
def prebuilt_tensorflow(image_uri: str) -> Optional[str]:
    """The TensorFlow ``major.minor`` of a Vertex prebuilt training image (``.../tf-cpu.2-17.py310``), else None."""
    found = _PREBUILT_TF.search(str(image_uri))
    return f"{found.group(1)}.{found.group(2)}" if found else None


def local_tensorflow() -> Optional[str]:
    """The TensorFlow version installed here (``2.21.0``), without importing it."""
    try:
        return metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        return None


def image_mismatch(cfg: ExperimentConfig) -> Optional[str]:
    """A note when the executor image's TensorFlow is not the one tfscale runs with here, else None."""
    image_tf, here = prebuilt_tensorflow(cfg.vertex.executor_image_uri), local_tensorflow()
    if image_tf is None or here is None or here.startswith(image_tf + "."):
        return None
    return (f"vertex.executor_image_uri has TensorFlow {image_tf} and the package requires {'.'.join(here.split('.')[:2])}, "
            f"which pip installs over it in each replica (Vertex has no prebuilt training image with it); for an image "
            f"that has it, build the custom container tfscale wrote beside the package and set vertex.image")


def write_container(cfg: ExperimentConfig, sdist: Path) -> Dict[str, str]:
    """Write a ``Dockerfile`` beside ``sdist`` for a training container with this machine's TensorFlow.

    Returns ``{"dockerfile", "build", "image"}``: the file, the command that builds and pushes the image
    (Cloud Build, no local Docker needed) and the image name to pass as ``vertex.image``.
    """
    tf_version = local_tensorflow() or "2.21.*"
    gpu = bool(cfg.vertex.accelerator_type)
    tf_requirement = f"tensorflow[and-cuda]=={tf_version}" if gpu else f"tensorflow=={tf_version}"
    text = "\n".join([
        "# A Vertex AI training container for tfscale, with the TensorFlow it was developed against.",
        "FROM python:3.11-slim",
        f"COPY {sdist.name} /tmp/{sdist.name}",
        f"RUN pip install --no-cache-dir '{tf_requirement}' /tmp/{sdist.name} && rm /tmp/{sdist.name}",
        "WORKDIR /work",
        "# Vertex runs the containerSpec's command: python -m orchestrator.app.cli <overrides>",
        "",
    ])
    path = sdist.parent / "Dockerfile"
    path.write_text(text)
    v = cfg.vertex
    image = f"{v.region}-docker.pkg.dev/{v.project}/tfscale/tfscale:{project_version()}"
    return {"dockerfile": str(path), "image": image,
            "build": f"gcloud builds submit --project={v.project} --tag={image} {sdist.parent}"}


# ------------------------------------------------------------------------------------------ staging
def stage(local: Path, uri: str) -> str:
    """Copy a file or directory to ``uri`` (a storage URI or a local path) through tfscale's storage layer."""
    from orchestrator.artifacts import storage

    if local.is_dir():
        storage.upload_dir(local, uri)
    else:
        storage.put_bytes(uri, local.read_bytes())
    return uri


def build_and_stage(cfg: ExperimentConfig, display_name: str, work_dir: Path) -> str:
    """Build the sdist, stage it at :func:`package_uri` and write the container spec beside it; return that URI."""
    built = build_sdist(work_dir / "dist")
    container = write_container(cfg, built)
    note = image_mismatch(cfg)
    if note:
        print(f"tfscale: note: {note}:\n  {container['build']}\n  then add vertex.image={container['image']}", flush=True)
    return stage(built, package_uri(cfg, display_name))
