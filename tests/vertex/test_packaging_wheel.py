"""The Vertex job's package is built from an installed wheel as well as from a checkout.

The wheel is built from a copy of the checkout (``pip wheel --no-deps``) and installed without dependencies
into a fresh virtual environment: the packaging step needs no TensorFlow. There, site-packages has no
``pyproject.toml``, only the distribution's files and metadata.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("orchestrator", "strategies", "tuners", "hydra_plugins", "conf", "pyproject.toml", "README.md")


def run(*argv, cwd, timeout=240):
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv (``--system-site-packages``) with tfscale installed from its wheel, nothing else."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:  # a copy: building in the checkout would leave build/ and egg-info behind
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", cwd=src)
    (wheel,) = (tmp / "dist").glob("tfscale-*.whl")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=tmp)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=tmp)
    return tmp, python


def test_the_job_package_is_built_from_the_installed_wheel(wheel_venv):
    tmp, python = wheel_venv
    code = ("import sys; from pathlib import Path; from orchestrator.vertex import packaging; "
            "print(packaging.is_checkout()); print(packaging.PROJECT_ROOT); print(packaging.build_sdist(Path(sys.argv[1])))")
    is_checkout, root, sdist = run(python, "-c", code, tmp / "out", cwd=tmp).split()
    assert is_checkout == "False" and root.endswith("site-packages")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
        pyproject = archive.extractfile(f"tfscale-{Path(sdist).name[len('tfscale-'):-len('.tar.gz')]}/pyproject.toml").read().decode()
    for needed in ("orchestrator/app/cli.py", "orchestrator/launch/task_main.py", "strategies/tf_config.py", "tuners/__init__.py",
                   "conf/config.yaml", "conf/backend/ray.yaml", "hydra_plugins/tfscale_sweeper/tfscale_sweeper.py"):
        assert needed in names, needed
    assert not any(n.startswith("hydra_plugins/") and "tfscale_sweeper" not in n and n != "hydra_plugins" for n in names)
    # The pinned TensorFlow, and gcsfs for gs:// inside the job, are plain dependencies of the job's package.
    dependencies = [d.strip().strip('"') for d in pyproject.split("dependencies = [", 1)[1].split("]", 1)[0].split('", "')]
    (tensorflow,) = [d for d in dependencies if d.startswith("tensorflow") and d[len("tensorflow")] in "<>=!~"]
    assert set(tensorflow[len("tensorflow"):].split(",")) == {">=2.21", "<2.22"}
    assert any(d.startswith("gcsfs") for d in dependencies)
    # ... and it builds: a wheel made from it carries the config groups.
    run(sys.executable, "-m", "pip", "wheel", sdist, "--no-deps", "--no-build-isolation", "-w", tmp / "rebuilt", cwd=tmp)
    (rebuilt,) = (tmp / "rebuilt").glob("tfscale-*.whl")
    assert "conf/backend/ray.yaml" in zipfile.ZipFile(rebuilt).namelist()
