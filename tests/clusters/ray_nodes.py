"""A 2-node Ray cluster started the way its operators start one: ``ray start`` with token authentication.

The head (``RAY_AUTH_MODE=token ray start --head --node-ip-address=127.0.0.1 --num-cpus=1 --port=P``) and a
second node (``ray start --address=127.0.0.1:P ... --num-cpus=1``) run in working directories of their own,
with their own Ray temp directory and token file. Each ``ray start`` runs with ``--block`` under tfscale's
process supervisor, so stopping its process group stops that node, and only that node: ``ray stop`` would
stop every Ray on the machine.

The nodes run an interpreter where tfscale is not installed (:func:`bare_python`: this environment's
packages, Ray and TensorFlow among them, without tfscale's editable install), as on a cluster someone else
set up: tfscale's code reaches them only through the job's Ray runtime_env.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from orchestrator.runtime import supervisor

def bare_python(root: Path) -> Path:
    """A venv whose packages are this environment's site-packages as a plain path: the ``.pth`` files there
    (tfscale's editable install among them) are not run, so ``import orchestrator`` fails in it."""
    import site

    venv = root / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site_packages,) = [p for p in site.getsitepackages() if p.startswith(sys.prefix)]
    (target,) = list((venv / "lib").glob("python*/site-packages"))
    (target / "borrowed.pth").write_text(site_packages + "\n")
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import ray, orchestrator"], cwd=root, capture_output=True, text=True)
    if "No module named 'orchestrator'" not in probe.stderr:
        raise RuntimeError(f"the nodes' interpreter should have Ray and no tfscale:\n{probe.stderr[-2000:]}")
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: A test cluster holds nothing worth a slow shutdown: `ray start --block` stops its node within a few seconds
#: of SIGTERM, and what is left is killed.
STOP_GRACE_S = 4


@dataclass
class RayCluster:
    """A running cluster: its address, the token file, and the IDs of its nodes."""

    address: str
    client_address: str  # Ray Client (ray://)
    token_path: Path
    node_ids: List[str]
    node_dirs: List[Path]
    ray_tmp: str
    children: List[supervisor.Child] = field(default_factory=list)

    def driver_env(self, **extra: str) -> Dict[str, str]:
        """The environment of a driver on this machine: ``RAY_ADDRESS`` and where the token is, nothing else.

        ``RAY_AUTH_MODE`` is left unset, as in a user's shell: tfscale turns token mode on itself.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_ADDRESS=self.address, RAY_AUTH_TOKEN_PATH=str(self.token_path), TF_CPP_MIN_LOG_LEVEL="2", **extra)
        return env

    def stop(self) -> None:
        """Stop both nodes: SIGTERM to each `ray start --block` (which stops its node's processes), SIGKILL to
        what is left of its process group after STOP_GRACE_S."""
        import shutil

        for child in reversed(self.children):
            child.stop(STOP_GRACE_S)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def start_cluster(root: Path, timeout: float = 120) -> RayCluster:
    """Start the head and a second node (one CPU each) under ``root``; return once both are alive."""
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    import tempfile

    # Short (Ray's socket paths live below it) and private: with the default /tmp/ray, `ray start` would record
    # this cluster as the machine's current one, and a plain ray.init() elsewhere would join it.
    ray_tmp = tempfile.mkdtemp(prefix="tfr", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_TMPDIR=ray_tmp)
    port, client_port = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--block", "--disable-usage-stats",
              f"--dashboard-agent-listen-port={free_port()}"]
    head_dir, node_dir = root / "head", root / "node2"
    head_dir.mkdir()
    node_dir.mkdir()
    ray = [str(bare_python(root)), "-m", "ray.scripts.scripts"]  # `ray`, run by an interpreter without tfscale
    cluster = RayCluster(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", token, [], [head_dir, node_dir], ray_tmp)
    try:
        cluster.children.append(supervisor.start(
            [*ray, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--ray-client-server-port={client_port}",
             *common], cwd=head_dir, env=env, stdout=open(root / "head.log", "wb"),
            stderr=supervisor.STDOUT))
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or cluster.children[0].poll() is not None:
                    raise RuntimeError(f"the Ray head did not start:\n{(root / 'head.log').read_text()[-3000:]}")
                time.sleep(0.2)
        cluster.children.append(supervisor.start(
            [*ray, "start", f"--address=127.0.0.1:{port}", *common], cwd=node_dir, env=env,
            stdout=open(root / "node2.log", "wb"), stderr=supervisor.STDOUT))
        probe = ("import json, ray; ray.init(logging_level='ERROR'); "
                 "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
        while True:
            out = subprocess.run([sys.executable, "-c", probe], env=dict(env, RAY_ADDRESS=cluster.address),
                                 capture_output=True, text=True, timeout=60).stdout.strip().splitlines()
            ids = json.loads(out[-1]) if out else []
            if len(ids) == 2:
                cluster.node_ids = ids
                return cluster
            if time.monotonic() > deadline:
                raise RuntimeError(f"the second Ray node did not join:\n{(root / 'node2.log').read_text()[-3000:]}")
            time.sleep(0.5)
    except BaseException:
        cluster.stop()
        raise
