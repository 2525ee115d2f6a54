"""The one way tfscale connects to Ray: a local Ray of its own, or an existing cluster.

Attaching to a cluster tfscale did not start (``backend.ray_address``, ``hydra.launcher.address`` or
``RAY_ADDRESS``: ``auto``, ``host:port`` or ``ray://host:port``):

* no ``num_cpus``/``num_gpus`` are passed: Ray refuses them for an existing cluster, whose nodes declared
  their own;
* token authentication, which ``ray start`` turns on, works as Ray documents it for drivers: the token comes
  from ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``. Ray itself only sends
  it when ``RAY_AUTH_MODE=token`` is set in the driver (for an explicit address it never turns token mode on
  by itself), so when a token is available and ``RAY_AUTH_MODE`` is unset, tfscale sets it: a cluster
  without authentication ignores the token;
* the address is probed first (a TCP connect of a few seconds): Ray would otherwise wait minutes for a
  head that is not there;
* the project's code travels with the job as a Ray ``runtime_env`` (:func:`project_runtime_env`): its
  packages as ``py_modules``, pip requirements when configured, and the variables that say where storage
  is (``STORAGE_EMULATOR_HOST``, ``AWS_ENDPOINT_URL``), so nodes where tfscale is not installed run tasks.

Every failure to attach is a :class:`~orchestrator.errors.ConfigError` naming the address and the fix.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from orchestrator.artifacts.run_record import RAY_NODE_ENV as NODE_ENV  # noqa: F401  (public here too)
from orchestrator.errors import ConfigError

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
#: The packages a task needs, shipped to every node as ``py_modules``.
PROJECT_PACKAGES = ("orchestrator", "strategies", "tuners", "conf")
#: Variables that say where storage is (not credentials), forwarded to the tasks on every node.
STORAGE_ENDPOINT_ENVS = ("STORAGE_EMULATOR_HOST", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
PROBE_TIMEOUT_S = 3.0
_EXCLUDES = ["__pycache__", "*.pyc", "*.egg-info", ".pytest_cache"]


def address_of(address: Optional[str]) -> Optional[str]:
    """The cluster address a driver attaches to: ``address``, else ``RAY_ADDRESS``, else None (start a local Ray)."""
    return str(address) if address else (os.environ.get("RAY_ADDRESS") or None)


def attaches(address: Optional[str]) -> bool:
    """Whether :func:`connect` joins an existing cluster (``address`` given or ``RAY_ADDRESS`` set)."""
    return address_of(address) is not None


def token_available() -> bool:
    """Whether a Ray auth token is where Ray looks for one (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``)."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return True
    path = os.environ.get(TOKEN_PATH_ENV) or str(Path.home() / ".ray" / "auth_token")
    try:
        return bool(Path(path).read_text().strip())
    except OSError:
        return False


def _enable_token_auth() -> None:
    os.environ[AUTH_MODE_ENV] = "token"
    if "ray" in sys.modules:  # Ray caches its config at import; refresh it as `ray start` does
        try:
            from ray._raylet import Config

            Config.initialize("")
        except Exception:  # older or newer Ray: the variable alone is read on the next initialisation
            pass


def _probe(address: str, key: str) -> None:
    """Fail fast when nothing listens at ``host:port`` (Ray itself retries for minutes)."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" or a form Ray resolves itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(key, address, f"Nothing answers at {target} ({exc.strerror or exc}). Start the cluster "
                          f"(`ray start --head --port={port}` on the head node) or give the head's address.") from None


def _causes(exc: BaseException) -> List[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _translate(exc: BaseException, address: str, key: str) -> ConfigError:
    """One line for a failed ``ray.init`` on an existing cluster."""
    text = " ".join(str(e) for e in _causes(exc))
    if "InvalidAuthToken" in text or "AuthenticationError" in text or "Authentication token" in text:
        if os.environ.get(AUTH_MODE_ENV, "").lower() == "token" and token_available():
            problem = "the cluster rejected this machine's Ray auth token"
        else:
            problem = "the cluster uses token authentication and no token was found"
        return ConfigError(key, address, f"Set {TOKEN_ENV} to the cluster's token (`ray get-auth-token` on the head "
                           f"node prints it) or {TOKEN_PATH_ENV} to a file holding it.", problem=problem)
    if "Could not find any running Ray instance" in text:
        return ConfigError(key, address, "No Ray cluster runs on this machine. Start one (`ray start --head`) or "
                           "give the head's address (host:port or ray://host:10001).")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(key, address, f"Check the address and that the cluster runs the same Ray version "
                       f"({_ray_version()}).", problem=f"could not attach: {first}")


def _ray_version() -> str:
    try:
        from importlib.metadata import version

        return version("ray")
    except Exception:
        return "unknown"


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None, *, runtime_env: Optional[Dict[str, Any]] = None,
            key: str = "backend.ray_address") -> Any:
    """Connect this process to Ray unless it already is; returns the ``ray`` module.

    With ``address`` (or ``RAY_ADDRESS``) it attaches to that cluster (see the module doc), with
    ``runtime_env`` for every task and actor of this driver. Otherwise it starts a local Ray with
    ``num_cpus`` (default: this machine's cores), without dashboard; ``runtime_env`` is not needed there.
    ``key`` names the setting the address came from in error messages.
    """
    target = address_of(address)
    if target is not None and AUTH_MODE_ENV not in os.environ and token_available():
        _enable_token_auth()
    import ray

    if ray.is_initialized():
        return ray
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if target is None:
        ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1), include_dashboard=False, **quiet)
        return ray
    where = key if address else "RAY_ADDRESS"
    _probe(target, where)
    try:
        ray.init(address=target, runtime_env=runtime_env or None, **quiet)
    except Exception as exc:  # ConnectionError, RuntimeError, AuthenticationError... all mean "not attached"
        raise _translate(exc, target, where) from None
    return ray


def project_runtime_env(pip: Sequence[str] = (), env_vars: Optional[Dict[str, str]] = None, *,
                        hydra_plugins: bool = False) -> Dict[str, Any]:
    """The ``runtime_env`` that lets a node without tfscale installed run tfscale's tasks.

    The project's packages (:data:`PROJECT_PACKAGES`, from wherever this process imported them: a checkout
    or site-packages) become ``py_modules``; ``pip`` requirements are installed by Ray on each node; the
    storage endpoint variables set here (:data:`STORAGE_ENDPOINT_ENVS`) and ``env_vars`` are set in every
    worker. ``hydra_plugins``: ship this process's ``hydra_plugins`` folders too (a sweep job unpickles
    Hydra's config store, whose plugin configs are classes from there).
    """
    import importlib
    import importlib.util

    modules = []
    for name in PROJECT_PACKAGES:
        module = importlib.import_module(name)
        modules.append(str(Path(module.__file__).resolve().parent))
    if hydra_plugins:  # located, not imported: a namespace package above this layer
        spec = importlib.util.find_spec("hydra_plugins")
        paths = list(spec.submodule_search_locations or []) if spec is not None else []
        modules += dict.fromkeys(str(Path(p).resolve()) for p in paths if Path(p).is_dir())
    env = {k: os.environ[k] for k in STORAGE_ENDPOINT_ENVS if os.environ.get(k)}
    env.update({str(k): str(v) for k, v in (env_vars or {}).items()})
    runtime_env: Dict[str, Any] = {"py_modules": modules, "excludes": list(_EXCLUDES)}
    if env:
        runtime_env["env_vars"] = env
    if pip:
        runtime_env["pip"] = [str(p) for p in pip]
    return runtime_env


# ------------------------------------------------------------------------------------------- the cluster
def alive_nodes() -> List[Dict[str, Any]]:
    """The cluster's live nodes: ``{"node_id", "ip", "cpus", "gpus"}`` each (connected driver only)."""
    import ray

    return [{"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress"), "cpus": float(n.get("Resources", {}).get("CPU", 0)),
             "gpus": float(n.get("Resources", {}).get("GPU", 0))} for n in ray.nodes() if n.get("Alive")]


def shares_this_filesystem(address: Optional[str]) -> bool:
    """Whether every task of the cluster sees this machine's files: a single node, on this machine.

    A cluster of several nodes (even several on one machine, each with its own working directory) or one
    reached through Ray Client (``ray://``) does not: its tasks must read and write storage URIs.
    """
    import ray

    target = address_of(address)
    if target is not None and target.startswith("ray://"):
        return False
    nodes = alive_nodes()
    if len(nodes) != 1:
        return False
    return nodes[0]["node_id"] == ray.get_runtime_context().get_node_id()


def node_facts() -> Dict[str, Any]:
    """Where the calling Ray worker runs: node ID, node IP and host name."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "host": socket.gethostname()}
