"""``tfscale serve serving.engine=ray``: the TF-Serving-compatible server as replicas on Ray Serve.

This process is the driver. It connects to Ray as ``backend=ray`` does (:func:`ray_session.connect`):
``serving.ray_address`` or ``RAY_ADDRESS`` attaches to an existing cluster (token authentication included,
the project's code shipped as the job's runtime_env, which Ray Serve passes on to the replicas); otherwise it
starts a local Ray of its own. It starts Ray Serve with its HTTP proxy on ``serving.host:serving.rest_port``
and, unless ``serving.grpc_port=-1``, its gRPC proxy on ``serving.grpc_port`` carrying TF Serving's
``PredictionService`` and ``ModelService``; then it deploys the application ``serving.name`` (route ``/``):
``serving.replicas`` replicas of :class:`~orchestrator.serving.ray_replica.ServingReplica`, or Ray Serve's
autoscaling between ``serving.autoscaling.min_replicas`` and ``max_replicas``. Each replica reads the
repository from its URI and polls it on its own.

:meth:`RayServeEngine.stop` takes down only what this process started: the application; Ray Serve itself
if it was not running before (its controller and proxies are detached actors that would outlive the driver);
the local Ray if there was no cluster to attach to. Should this process be killed outright (``kill -9``), the
local Ray's GCS and raylet die with it (Ray ties them to their parent), taking the controller, the proxies and
the replicas along; Ray's dashboard and runtime-env agents notice and exit on their own, within about two
minutes.

A stock TF Serving gRPC client reaches the replicas unchanged while this application is the only one on the
cluster's Ray Serve: the proxy routes a call without ``application`` metadata to the only application
there is. Next to other applications, clients add the metadata ``("application", serving.name)``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

from orchestrator.artifacts import storage
from orchestrator.artifacts.publish import write_text
from orchestrator.errors import ConfigError, TfscaleError
from orchestrator.launch import ray_session

log = logging.getLogger("tfscale.serving")

DEPLOYMENT = "tfscale-serving"  # the deployment's name inside the application serving.name


def replica_settings(s: Any) -> Dict[str, Any]:
    """The ``serving`` config a replica gets: a plain dict, with local repository paths made absolute
    (a replica's working directory is Ray's) and the driver-only settings left out."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(s, resolve=True)
    for key in ("model_base", "model_config_file", "model_base_path"):
        value = out.get(key)
        if value and not storage.is_remote(value):
            out[key] = os.path.abspath(str(value))
    out["ready_file"] = None
    return out


def deployment_options(s: Any) -> Dict[str, Any]:
    """Ray Serve options of the replicas' deployment: a fixed ``num_replicas``, or an ``autoscaling_config``
    when ``serving.autoscaling.max_replicas`` is set (starting from ``serving.replicas`` within the bounds)."""
    a = s.autoscaling
    options: Dict[str, Any] = {
        "name": DEPLOYMENT,
        # Ray Serve holds further requests in its proxies instead of sending a replica more than its
        # in-flight cap, which would answer them with 429.
        "max_ongoing_requests": int(s.max_inflight_requests),
        "ray_actor_options": {"num_cpus": float(s.ray_replica_cpus)},
        # A replica loads and warms every model in its constructor; a large model on a busy node takes a while.
        "health_check_timeout_s": 60,
        "graceful_shutdown_timeout_s": 20,
    }
    if a.max_replicas is None:
        options["num_replicas"] = int(s.replicas)
    else:
        lo, hi = int(a.min_replicas), int(a.max_replicas)
        options["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi,
                                         "initial_replicas": min(max(int(s.replicas), lo), hi),
                                         "target_ongoing_requests": float(a.target_ongoing_requests)}
    return options


def _most_replicas(s: Any) -> int:
    return int(s.autoscaling.max_replicas if s.autoscaling.max_replicas is not None else s.replicas)


def _check_repository(s: Any, attached: bool) -> None:
    """Config errors about the repository before Ray starts (as the embedded server would report them).

    On a cluster this machine may not see a node-local path (a shared mount on the nodes): then only the
    replicas can tell, and their failure to start ends :meth:`RayServeEngine.start`.
    """
    from orchestrator.serving.server import model_source

    local = [v for v in (s.model_base_path or s.model_base, s.model_config_file) if v and not storage.is_remote(v)]
    if attached and local and not all(Path(v).exists() for v in local):
        log.info("%s is not on this machine; the replicas read it on their nodes", " / ".join(map(str, local)))
        return
    model_source(s)


class RayServeEngine:
    """The ``serving.engine=ray`` server: ``start()``, ``wait()`` until SIGINT/SIGTERM, ``stop()``.

    ``rest_port`` and ``grpc_port`` are the proxies' ports once started (``serving.rest_port=0`` /
    ``grpc_port=0`` pick free ports on this machine; ``grpc_port`` is None without gRPC).
    """

    def __init__(self, s: Any):
        self.settings = s
        self.rest_port: Optional[int] = None
        self.grpc_port: Optional[int] = None
        self._ray: Any = None
        self._started_ray = False
        self._started_serve = False
        self._deployed = False
        self._stopped = threading.Event()
        self._wake = threading.Event()

    def start(self) -> "RayServeEngine":
        """Connect to Ray, start Ray Serve's proxies, deploy the replicas and wait until they all serve."""
        from orchestrator.launch.processes import free_port

        s = self.settings
        address = str(s.ray_address) if s.ray_address else None
        attached = ray_session.attaches(address)
        _check_repository(s, attached)
        self.rest_port = int(s.rest_port) or free_port(s.host)
        self.grpc_port = None if s.grpc_port < 0 else (int(s.grpc_port) or free_port(s.host))
        needed = math.ceil(_most_replicas(s) * float(s.ray_replica_cpus))
        runtime_env = ray_session.project_runtime_env() if attached else None
        self._ray = ray_session.connect(address, max(os.cpu_count() or 1, needed), runtime_env=runtime_env,
                                        key="serving.ray_address")
        self._started_ray = not attached
        try:
            self._start_serve(attached, needed)
        except BaseException:
            self.stop()
            raise
        log.info("serving on Ray Serve (%s): application %s, %s; REST http://%s:%s  gRPC %s",
                 f"cluster {ray_session.address_of(address)}" if attached else "local Ray", s.name,
                 self._scale_text(), s.host, self.rest_port,
                 f"{s.host}:{self.grpc_port}" if self.grpc_port is not None else "off")
        if s.ready_file:
            write_text(Path(s.ready_file), json.dumps({"rest_port": self.rest_port, "grpc_port": self.grpc_port,
                                                         "pid": os.getpid(), "host": s.host, "engine": "ray",
                                                         "application": s.name}))
        return self

    def _scale_text(self) -> str:
        a = self.settings.autoscaling
        if a.max_replicas is None:
            return f"{self.settings.replicas} replica(s)"
        return f"autoscaling {a.min_replicas}..{a.max_replicas} replicas (target {a.target_ongoing_requests} ongoing)"

    def _start_serve(self, attached: bool, needed: int) -> None:
        from ray import serve

        from orchestrator.serving.ray_replica import GRPC_SERVICER_FUNCTIONS, ServingReplica

        s = self.settings
        if attached:
            cpus = sum(n["cpus"] for n in ray_session.alive_nodes())
            if cpus < needed:
                log.warning("the cluster has %g CPUs and the replicas ask for %d (serving.ray_replica_cpus x replicas); "
                            "replicas beyond that wait for the cluster to grow", cpus, needed)
        if attached and self.grpc_port is not None:
            lacking = _nodes_without_grpc_messages(self._ray)
            if lacking:
                log.warning("tensorflow-serving-api is not installed on node(s) %s, where Ray Serve's gRPC proxy would "
                            "need TF Serving's messages; serving REST only (install it on the nodes for gRPC)",
                            ", ".join(lacking))
                self.grpc_port = None
        running = _serve_details()
        if running is None:
            grpc_options = {"port": self.grpc_port, "grpc_servicer_functions": list(GRPC_SERVICER_FUNCTIONS)} \
                if self.grpc_port is not None else {}
            serve.start(proxy_location=str(s.ray_proxy_location), http_options={"host": s.host, "port": self.rest_port},
                        grpc_options=grpc_options)
            self._started_serve = True
        else:
            self._adopt_running_serve(running)
        app = serve.deployment(ServingReplica).options(**deployment_options(s)).bind(replica_settings(s))
        try:
            serve.run(app, name=str(s.name), route_prefix="/")
        except Exception as e:  # a replica that cannot start (its traceback is in the message), a route taken...
            first = next((line for line in str(e).splitlines() if "Error" in line), str(e).splitlines()[0] if str(e) else "")
            raise TfscaleError(f"Ray Serve could not deploy the replicas of {s.name}: {first.strip()[:500]} "
                               "(the replicas' logs are under the Ray session's logs/serve/)") from None
        self._deployed = True

    def _adopt_running_serve(self, running: Dict[str, Any]) -> None:
        """Ray Serve already runs on the cluster: its proxies' ports are fixed; deploy behind them."""
        s = self.settings
        http_port = (running.get("http_options") or {}).get("port")
        grpc = running.get("grpc_options") or {}
        if http_port and int(http_port) != self.rest_port:
            log.warning("Ray Serve already runs on this cluster with its HTTP proxy on port %s; serving.rest_port=%s "
                        "does not apply", http_port, s.rest_port)
            self.rest_port = int(http_port)
        functions = set(grpc.get("grpc_servicer_functions") or [])
        from orchestrator.serving.ray_replica import GRPC_SERVICER_FUNCTIONS

        if self.grpc_port is not None:
            if not set(GRPC_SERVICER_FUNCTIONS) <= functions:
                log.warning("Ray Serve already runs on this cluster without TF Serving's gRPC services; only REST is "
                            "served (start Ray Serve with grpc_servicer_functions %s for gRPC)", list(GRPC_SERVICER_FUNCTIONS))
                self.grpc_port = None
            else:
                self.grpc_port = int(grpc.get("port") or self.grpc_port)
        names = set((running.get("applications") or {}))
        if str(s.name) in names:
            raise ConfigError("serving.name", s.name, "An application of that name already runs on this cluster's Ray "
                              "Serve; choose another serving.name or delete it (`serve shutdown` / serve.delete).")

    def stop(self) -> None:
        """Delete the application, then Ray Serve and the local Ray if this process started them (idempotent)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._wake.set()
        if self._ray is None or not self._ray.is_initialized():
            return
        from ray import serve

        try:
            if self._started_serve:
                serve.shutdown()  # the application, the controller and the proxies
            elif self._deployed:
                serve.delete(str(self.settings.name))
        except Exception as e:  # the cluster may be gone already; the local Ray is still stopped below
            log.warning("stopping Ray Serve: %s", e)
        finally:
            # Stops the local Ray this process started; on a cluster it only detaches this driver.
            self._ray.shutdown()
        log.info("server stopped")

    def wait(self) -> None:
        """Block until SIGINT/SIGTERM (main thread) or :meth:`stop`."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self._wake.set())
        self._wake.wait()

    def __enter__(self) -> "RayServeEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _nodes_without_grpc_messages(ray: Any) -> List[str]:
    """The cluster nodes (IPs) where ``tensorflow_serving`` cannot be imported.

    Ray Serve's proxies are system actors: the job's runtime_env does not reach them, and one that cannot
    import its gRPC servicer functions fails to start, taking the node's HTTP proxy down with it.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def importable() -> bool:
        import importlib.util

        return importlib.util.find_spec("tensorflow_serving") is not None

    nodes = ray_session.alive_nodes()
    probes = [importable.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["node_id"], soft=False)).remote()
              for n in nodes]
    try:
        found = ray.get(probes, timeout=120)
    except Exception as e:  # a node too busy to answer: let Ray Serve try
        log.warning("could not check the nodes for tensorflow-serving-api: %s", e)
        return []
    return [str(n["ip"]) for n, ok in zip(nodes, found) if not ok]


def _serve_details() -> Optional[Dict[str, Any]]:
    """Ray Serve's instance details (http_options, grpc_options, applications) if it already runs, else None."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else dict(client.get_serve_details())
