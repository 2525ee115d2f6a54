"""Config schemas of the ``serving`` group and of ``deploy.tf_serving`` (no TensorFlow imported here).

``conf/serving/<option>.yaml`` merges into :class:`ServingConfig`; ``conf/deploy/tf_serving.yaml`` sets
``deploy.tf_serving``, typed by :class:`TfServingDeployConfig`. Values are checked by :func:`check_serving`
and :func:`check_tf_serving_deploy`, which raise :class:`~orchestrator.errors.ConfigError`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from orchestrator.errors import ConfigError

VERSION_POLICIES = ("latest", "all", "specific")
LAUNCH_MODES = ("auto", "binary", "embedded", "none")
ENGINES = ("embedded", "ray")
PROXY_LOCATIONS = ("EveryNode", "HeadOnly")


@dataclass
class VersionPolicyConfig:
    """Which versions of a model are loaded, as TF Serving's ``model_version_policy``.

    ``latest`` keeps the ``num_versions`` highest versions, ``all`` every version, ``specific`` exactly
    ``versions``. Requests that name no version go to the highest loaded version.
    """

    policy: str = "latest"
    num_versions: int = 1
    versions: List[int] = field(default_factory=list)


@dataclass
class BatchingConfig:
    """Server-side batching, as TF Serving's ``BatchingParameters``.

    Concurrent requests for the same model version and signature are merged into one call of up to
    ``max_batch_size`` rows, waiting at most ``batch_timeout_micros`` for a batch to fill.
    """

    enabled: bool = False
    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    num_batch_threads: int = 2
    max_enqueued_batches: int = 100


@dataclass
class AdminConfig:
    """Who may change what is served at run time (gRPC ``ModelService.HandleReloadConfigRequest``).

    Reload is off unless ``enable_reload``. When on, a caller must send ``authorization: Bearer <token>``
    metadata with the token read from ``token_file`` or the environment variable ``token_env``, or present a
    client certificate verified against ``grpc_tls_client_ca`` whose common name or DNS name is listed in
    ``client_names`` (``["*"]``: any verified certificate). Every ``base_path`` of a reload must lie under one of
    ``allowed_roots`` (default: ``model_base``, and ``model_base_path`` when set) after symlinks and ``..`` are
    resolved.
    """

    enable_reload: bool = False
    token_file: Optional[str] = None
    token_env: str = "TFSCALE_SERVING_ADMIN_TOKEN"
    client_names: List[str] = field(default_factory=list)
    allowed_roots: List[str] = field(default_factory=list)


@dataclass
class MonitoringConfig:
    """TF Serving's Prometheus endpoint (``--monitoring_config_file``)."""

    prometheus: bool = True
    path: str = "/monitoring/prometheus/metrics"


@dataclass
class AutoscalingConfig:
    """Ray Serve autoscaling of the replicas (``serving.engine=ray``), on when ``max_replicas`` is set.

    Ray Serve keeps between ``min_replicas`` and ``max_replicas`` replicas, adding replicas while the
    requests in progress or queued per replica exceed ``target_ongoing_requests`` and removing them when
    traffic falls; it starts with ``serving.replicas`` (kept within the bounds).
    """

    min_replicas: int = 1
    max_replicas: Optional[int] = None  # null: a fixed number of replicas (serving.replicas)
    target_ongoing_requests: float = 2.0


@dataclass
class ServingConfig:
    """The embedded TF-Serving-compatible server (``tfscale serve``).

    What is served: ``model_config_file`` if set; else the one model ``<model_base>/<model_name>`` if
    ``model_name`` is set; else ``<model_base>/models.config`` if present; else every model directory
    under ``model_base``. ``version_policy`` and ``version_labels`` apply to models that are not described
    by a models.config. ``model_base_path`` (``tensorflow_model_server --model_base_path``) serves the one
    model whose version directories are there, under the name ``model_name`` (default ``default``).
    ``engine=ray`` serves the same API from ``replicas`` Ray Serve replicas (:mod:`orchestrator.launch.ray_serve`).
    """

    name: str = "default"
    model_base: str = "models"
    model_name: Optional[str] = None
    model_config_file: Optional[str] = None
    model_base_path: Optional[str] = None  # one model's directory of versions, as tensorflow_model_server's flag
    host: str = "127.0.0.1"  # 0.0.0.0 to accept connections from other machines
    rest_port: int = 8501  # 0 = a free port (see ready_file)
    grpc_port: int = 8500  # 0 = a free port; -1 = no gRPC
    grpc_tls_cert: Optional[str] = None  # PEM certificate chain; with grpc_tls_key turns on TLS for gRPC
    grpc_tls_key: Optional[str] = None
    grpc_tls_client_ca: Optional[str] = None  # PEM CA bundle: gRPC clients must present a certificate it signed (mTLS)
    rest_tls_cert: Optional[str] = None  # PEM certificate chain; with rest_tls_key the REST API speaks HTTPS
    rest_tls_key: Optional[str] = None
    rest_tls_client_ca: Optional[str] = None  # PEM CA bundle: REST clients must present a certificate it signed (mTLS)
    admin: AdminConfig = field(default_factory=AdminConfig)
    unload_grace_s: float = 30.0  # a model directory that vanished keeps its versions serving this long
    file_system_poll_wait_seconds: float = 1.0  # 0 = load once, never poll
    version_policy: VersionPolicyConfig = field(default_factory=VersionPolicyConfig)
    version_labels: Dict[str, int] = field(default_factory=dict)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    allow_nonfinite: bool = False  # accept NaN / Inf in float inputs
    max_body_bytes: int = 16 * 1024 * 1024  # larger REST bodies get 413
    grpc_max_workers: int = 4  # Python threads share one interpreter lock: few workers serve more on few cores
    max_json_depth: int = 64  # REST bodies nested deeper get 400 (checked before JSON decoding)
    max_request_elements: int = 16 * 1024 * 1024  # values in one request (REST JSON or gRPC tensors); more get 400
    max_request_bytes: int = 256 * 1024 * 1024  # decoded gRPC tensor bytes per request; more get INVALID_ARGUMENT
    rest_max_workers: int = 32  # REST handler threads; further connections wait for one (rest_max_pending_connections)
    # Connections accepted and waiting for a free REST worker; one more is answered 503 at once and closed.
    rest_max_pending_connections: Optional[int] = None  # null = 4 x rest_max_workers; 0 = none wait
    # A REST request (request line, headers and body) must arrive within this long of its first byte, and an
    # idle keep-alive connection waits this long for its next request; past either it is closed.
    rest_read_timeout_s: float = 10.0
    # Predict/classify/regress and model status/metadata requests in progress at once, REST and gRPC together;
    # more get 429 / RESOURCE_EXHAUSTED (the Prometheus page is not counted).
    max_inflight_requests: int = 64
    warmup: bool = True  # one call on each new version before it takes traffic
    ready_file: Optional[str] = None  # JSON {"rest_port", "grpc_port", "pid"} written once serving
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)  # Prometheus endpoint on the REST port
    log_level: str = "INFO"
    # Where it runs. embedded: this process. ray: replicas on Ray Serve behind its HTTP and gRPC proxies,
    # each loading the repository from its URI (pip install 'tfscale[ray]'); the settings below are for it.
    engine: str = "embedded"
    replicas: int = 1  # the number of replicas (the starting number when autoscaling)
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    ray_address: Optional[str] = None  # an existing cluster (auto, host:port, ray://host:10001); null: RAY_ADDRESS or a local Ray
    ray_replica_cpus: float = 1.0  # CPUs Ray reserves for each replica
    ray_proxy_location: str = "EveryNode"  # EveryNode: a proxy on each node with a replica; HeadOnly: one, on the head


@dataclass
class TfServingDeployConfig:
    """``deploy=tf_serving``: files for a TF Serving deployment, its launch plan, and a smoke test.

    ``launch``: ``auto`` runs ``tensorflow_model_server`` if found on PATH, else the embedded server;
    ``binary`` requires the binary; ``embedded`` always uses the embedded server; ``none`` only writes files.
    ``rest_port``/``grpc_port`` are the ports of the launch plan and manifests; the smoke-test server binds
    ``smoke_rest_port``/``smoke_grpc_port`` (0 = free ports) on 127.0.0.1.
    """

    launch: str = "auto"
    binary: str = "tensorflow_model_server"
    image: str = "tensorflow/serving:latest"
    replicas: int = 1
    rest_port: int = 8501
    grpc_port: int = 8500
    smoke_rest_port: int = 0
    smoke_grpc_port: int = 0
    smoke_rows: int = 8
    smoke_timeout_s: float = 120.0
    keep_running: bool = False
    file_system_poll_wait_seconds: int = 1
    version_policy: VersionPolicyConfig = field(default_factory=VersionPolicyConfig)
    version_labels: Dict[str, int] = field(default_factory=dict)
    label_new_version: Optional[str] = None  # e.g. canary: point this label at the version just exported
    batching: BatchingConfig = field(default_factory=lambda: BatchingConfig(enabled=True))
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    volume_claim: Optional[str] = None  # Kubernetes PVC holding the repository; null = hostPath of model_base


def _port(key: str, value: int, allow: tuple = (0,)) -> None:
    if not (value in allow or 1 <= value <= 65535):
        raise ConfigError(key, value, f"Use a TCP port in 1..65535{' or ' + ' / '.join(map(str, allow)) if allow else ''}.")


def check_version_policy(key: str, p: VersionPolicyConfig) -> None:
    """Validate a :class:`VersionPolicyConfig` found at ``key``."""
    if p.policy not in VERSION_POLICIES:
        raise ConfigError(f"{key}.policy", p.policy, f"Use one of: {', '.join(VERSION_POLICIES)}.")
    if p.policy == "latest" and p.num_versions < 1:
        raise ConfigError(f"{key}.num_versions", p.num_versions, "Keep at least 1 version loaded.")
    if p.policy == "specific":
        if not p.versions:
            raise ConfigError(f"{key}.versions", list(p.versions), "policy=specific needs version numbers, e.g. [1, 2].")
        bad = [v for v in p.versions if int(v) < 1]
        if bad:
            raise ConfigError(f"{key}.versions", list(p.versions), f"Versions are positive integers; remove {bad}.")


def check_labels(key: str, labels: Any) -> None:
    """Labels map a name to a positive version number."""
    for name, version in dict(labels or {}).items():
        if not str(name) or not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{key}.{name}", version, "Label names use letters, digits, '-' and '_'.")
        if int(version) < 1:
            raise ConfigError(f"{key}.{name}", version, "A label points at a positive version number.")


def check_batching(key: str, b: BatchingConfig) -> None:
    """Positive sizes and threads, non-negative timeout."""
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if getattr(b, name) < 1:
            raise ConfigError(f"{key}.{name}", getattr(b, name), "Use a value >= 1.")
    if b.batch_timeout_micros < 0:
        raise ConfigError(f"{key}.batch_timeout_micros", b.batch_timeout_micros, "Use a value >= 0 (microseconds).")


def check_serving(s: ServingConfig, key: str = "serving") -> None:
    """Validate a composed :class:`ServingConfig`."""
    _port(f"{key}.rest_port", s.rest_port)
    _port(f"{key}.grpc_port", s.grpc_port, allow=(0, -1))
    for side in ("grpc", "rest"):
        cert, tls_key, client_ca = (getattr(s, f"{side}_tls_{n}") for n in ("cert", "key", "client_ca"))
        if bool(cert) != bool(tls_key):
            missing = f"{side}_tls_key" if cert else f"{side}_tls_cert"
            raise ConfigError(f"{key}.{missing}", None, "TLS needs both a certificate chain and its private key (PEM files).")
        if client_ca and not cert:
            raise ConfigError(f"{key}.{side}_tls_client_ca", client_ca, f"Client certificates are checked during the TLS "
                              f"handshake; also set {key}.{side}_tls_cert and {key}.{side}_tls_key.")
        for name, value in (("cert", cert), ("key", tls_key), ("client_ca", client_ca)):
            if value and not os.path.isfile(value):
                raise ConfigError(f"{key}.{side}_tls_{name}", value, "No such file; give the path of a PEM file.")
    if s.unload_grace_s < 0:
        raise ConfigError(f"{key}.unload_grace_s", s.unload_grace_s, "Use seconds >= 0 (0 = unload as soon as a directory is gone).")
    check_admin(f"{key}.admin", s.admin, s)
    if s.file_system_poll_wait_seconds < 0:
        raise ConfigError(f"{key}.file_system_poll_wait_seconds", s.file_system_poll_wait_seconds, "Use seconds >= 0 (0 = never poll).")
    if s.max_body_bytes < 1024:
        raise ConfigError(f"{key}.max_body_bytes", s.max_body_bytes, "Use at least 1024 bytes.")
    if s.grpc_max_workers < 1:
        raise ConfigError(f"{key}.grpc_max_workers", s.grpc_max_workers, "Use at least 1 worker thread.")
    for name in ("max_json_depth", "max_request_elements", "max_request_bytes", "rest_max_workers",
                 "max_inflight_requests", "rest_read_timeout_s"):
        if not getattr(s, name) > 0:
            raise ConfigError(f"{key}.{name}", getattr(s, name), "Use a positive number.")
    if s.rest_max_pending_connections is not None and s.rest_max_pending_connections < 0:
        raise ConfigError(f"{key}.rest_max_pending_connections", s.rest_max_pending_connections,
                          "Use a number of connections >= 0, or null for 4 x rest_max_workers.")
    if s.model_name is not None and ("/" in s.model_name or s.model_name.startswith(".")):
        raise ConfigError(f"{key}.model_name", s.model_name, "Give the model's directory name under model_base, not a path.")
    if s.model_base_path is not None and not str(s.model_base_path).strip():
        raise ConfigError(f"{key}.model_base_path", s.model_base_path, "Give the directory holding the model's version "
                          "directories, or null to serve model_base.")
    if s.monitoring.prometheus and not str(s.monitoring.path).startswith("/"):
        raise ConfigError(f"{key}.monitoring.path", s.monitoring.path, "Use an absolute URL path, e.g. /monitoring/prometheus/metrics.")
    check_version_policy(f"{key}.version_policy", s.version_policy)
    check_labels(f"{key}.version_labels", s.version_labels)
    check_batching(f"{key}.batching", s.batching)
    check_engine(key, s)


def check_engine(key: str, s: ServingConfig) -> None:
    """``serving.engine`` and its Ray Serve settings; ``engine=ray`` needs Ray Serve installed (looked up, not imported)."""
    import importlib.util

    if s.engine not in ENGINES:
        raise ConfigError(f"{key}.engine", s.engine, f"Use one of: {', '.join(ENGINES)}.")
    if s.replicas < 1:
        raise ConfigError(f"{key}.replicas", s.replicas, "Run at least 1 replica.")
    a = s.autoscaling
    if a.min_replicas < 1:
        raise ConfigError(f"{key}.autoscaling.min_replicas", a.min_replicas, "Keep at least 1 replica: a replica loads "
                          "every model before it answers, so scaling from 0 would hold the first requests that long.")
    if a.max_replicas is not None and a.max_replicas < a.min_replicas:
        raise ConfigError(f"{key}.autoscaling.max_replicas", a.max_replicas, f"min_replicas <= max_replicas must hold, but "
                          f"got min_replicas={a.min_replicas}, max_replicas={a.max_replicas}.")
    if not a.target_ongoing_requests > 0:
        raise ConfigError(f"{key}.autoscaling.target_ongoing_requests", a.target_ongoing_requests, "Use a positive number "
                          "of requests per replica (Ray Serve's default is 2).")
    if not s.ray_replica_cpus > 0:
        raise ConfigError(f"{key}.ray_replica_cpus", s.ray_replica_cpus, "Use a positive number of CPUs, e.g. 1 or 0.5.")
    if s.ray_proxy_location not in PROXY_LOCATIONS:
        raise ConfigError(f"{key}.ray_proxy_location", s.ray_proxy_location, f"Use one of: {', '.join(PROXY_LOCATIONS)}.")
    if s.engine == "embedded":
        for name, value, default in (("replicas", s.replicas, 1), ("autoscaling.max_replicas", a.max_replicas, None),
                                     ("ray_address", s.ray_address, None)):
            if value != default:
                raise ConfigError(f"{key}.{name}", value, f"It applies to replicas on Ray Serve; add {key}.engine=ray.")
        return
    missing = [m for m in ("ray", "starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{key}.engine", s.engine, f"Ray Serve is not installed (no {', '.join(missing)}); "
                          "pip install 'tfscale[ray]'.")
    for name in ("rest_tls_cert", "grpc_tls_cert"):
        if getattr(s, name):
            raise ConfigError(f"{key}.{name}", getattr(s, name), f"{key}.engine=ray serves through Ray Serve's proxies, "
                              "which tfscale does not set up for TLS; terminate TLS in front of them (a load balancer) "
                              f"or use {key}.engine=embedded.")
    if s.admin.enable_reload:
        raise ConfigError(f"{key}.admin.enable_reload", True, "Each Ray Serve replica reads the repository itself; edit "
                          "models.config in the repository (every replica re-reads it) instead of reloading over gRPC.")


def check_admin(key: str, a: AdminConfig, s: ServingConfig) -> None:
    """Shape checks of :class:`AdminConfig`; the token itself is read when the server starts."""
    if a.client_names and not s.grpc_tls_client_ca:
        raise ConfigError(f"{key}.client_names", list(a.client_names), "Client names are taken from verified client "
                          "certificates; set serving.grpc_tls_client_ca (and the gRPC TLS certificate and key).")
    if a.token_file and not os.path.isfile(a.token_file):
        raise ConfigError(f"{key}.token_file", a.token_file, "No such file; write the token (one line) to a file "
                          "readable only by the server's user.")
    for root in a.allowed_roots:
        if not str(root).strip():
            raise ConfigError(f"{key}.allowed_roots", list(a.allowed_roots), "Remove the empty entry; list repository directories.")


def check_tf_serving_deploy(d: TfServingDeployConfig, key: str = "deploy.tf_serving") -> None:
    """Validate a composed :class:`TfServingDeployConfig`."""
    if d.launch not in LAUNCH_MODES:
        raise ConfigError(f"{key}.launch", d.launch, f"Use one of: {', '.join(LAUNCH_MODES)}.")
    if d.replicas < 1:
        raise ConfigError(f"{key}.replicas", d.replicas, "Run at least 1 replica.")
    for name in ("rest_port", "grpc_port"):
        _port(f"{key}.{name}", getattr(d, name), allow=())
    for name in ("smoke_rest_port", "smoke_grpc_port"):
        _port(f"{key}.{name}", getattr(d, name))
    if d.smoke_rows < 1:
        raise ConfigError(f"{key}.smoke_rows", d.smoke_rows, "Send at least 1 test row.")
    if d.file_system_poll_wait_seconds < 0:
        raise ConfigError(f"{key}.file_system_poll_wait_seconds", d.file_system_poll_wait_seconds, "Use seconds >= 0.")
    if not d.image:
        raise ConfigError(f"{key}.image", d.image, "Name a container image, e.g. tensorflow/serving:latest.")
    if d.monitoring.prometheus and not str(d.monitoring.path).startswith("/"):
        raise ConfigError(f"{key}.monitoring.path", d.monitoring.path, "Use an absolute URL path, e.g. /monitoring/prometheus/metrics.")
    check_version_policy(f"{key}.version_policy", d.version_policy)
    check_labels(f"{key}.version_labels", d.version_labels)
    check_batching(f"{key}.batching", d.batching)
