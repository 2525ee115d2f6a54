"""The embedded server: a :class:`ModelManager` behind the REST and gRPC endpoints, plus the poller."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from orchestrator.errors import ConfigError
from orchestrator.artifacts import storage
from orchestrator.artifacts.publish import write_text
from orchestrator.serving.admin import AdminPolicy
from orchestrator.serving.config_files import MODELS_CONFIG, read_models_config
from orchestrator.serving.limits import InflightLimiter
from orchestrator.serving.manager import ModelManager
from orchestrator.serving.metrics import ServingMetrics
from orchestrator.serving.repository import ModelEntry, VersionPolicy, discover_models, version_dirs
from orchestrator.serving.status import RequestError

log = logging.getLogger("tfscale.serving")


def policy_of(p: Any) -> VersionPolicy:
    """A :class:`VersionPolicy` from a ``version_policy`` config node."""
    return VersionPolicy(p.policy, int(p.num_versions), tuple(int(v) for v in p.versions))


def model_source(s: Any) -> tuple[List[ModelEntry], Optional[Callable[[], Optional[List[ModelEntry]]]]]:
    """The models to serve per :class:`~orchestrator.config.serving.ServingConfig` ``s``, and a re-reader.

    A models.config is re-read on every poll when its modification time changes, so editing it (or
    ``tfscale rollback``) takes effect without a restart. As with ``tensorflow_model_server``, a config
    file wins over ``model_base_path``.
    """
    if s.model_base_path and not s.model_config_file:
        return [_base_path_entry(s)], None
    if storage.is_remote(s.model_base) and not s.model_config_file:
        return _bucket_source(s), None
    base = Path(s.model_base)
    config_file = Path(s.model_config_file) if s.model_config_file else None
    if config_file is None and not s.model_name and (base / MODELS_CONFIG).exists():
        config_file = base / MODELS_CONFIG
    if config_file is not None:
        if not config_file.exists():
            raise ConfigError("serving.model_config_file", str(config_file), "No such file; write one with deploy=tf_serving or point to an existing models.config.")
        entries = read_models_config(config_file)
        if not entries:
            raise ConfigError("serving.model_config_file", str(config_file), "It lists no models; add a model_config_list entry.")
        seen = {"mtime": os.stat(config_file).st_mtime}

        def reread() -> Optional[List[ModelEntry]]:
            try:
                mtime = os.stat(config_file).st_mtime
            except FileNotFoundError:
                return None
            if mtime == seen["mtime"]:
                return None
            seen["mtime"] = mtime
            try:
                return read_models_config(config_file)
            except ConfigError as e:  # a broken edit keeps the previous config serving
                log.error("ignoring unreadable %s: %s", config_file, e)
                return None

        return entries, reread
    policy = policy_of(s.version_policy)
    labels = {str(k): int(v) for k, v in dict(s.version_labels).items()}
    if s.model_name:
        path = (base / s.model_name).resolve()
        if not path.is_dir():
            raise ConfigError("serving.model_name", s.model_name, f"No model directory {path}; check serving.model_base and serving.model_name.")
        if not version_dirs(path):
            log.warning("%s has no numeric version directory yet; waiting for one to be published", path)
        return [ModelEntry(s.model_name, str(path), policy, labels)], None
    entries = discover_models(base, policy, labels)
    if not entries:
        raise ConfigError("serving.model_base", s.model_base, f"No models.config and no model with a version under {base.resolve()}; "
                          "export a model first or set serving.model_config_file.")
    return entries, None


def _base_path_entry(s: Any) -> ModelEntry:
    """The one model of ``model_base_path`` (``--model_base_path``), named ``model_name`` or ``default``."""
    policy = policy_of(s.version_policy)
    labels = {str(k): int(v) for k, v in dict(s.version_labels).items()}
    name = s.model_name or "default"
    if storage.is_remote(s.model_base_path):
        storage.check_access(s.model_base_path, "serving.model_base_path")
        return ModelEntry(name, str(s.model_base_path), policy, labels)
    path = Path(s.model_base_path).resolve()
    if not path.is_dir():
        raise ConfigError("serving.model_base_path", s.model_base_path, "No such directory; give the directory that holds "
                          "the model's numbered version directories (e.g. models/digits_mlp, not .../0001).")
    if not version_dirs(path):
        log.warning("%s has no numeric version directory yet; waiting for one to be published", path)
    return ModelEntry(name, str(path), policy, labels)


def _bucket_source(s: Any) -> List[ModelEntry]:
    """The models under a bucket ``model_base`` (a models.config there is not read: name the model or serve all)."""
    storage.check_access(s.model_base, "serving.model_base")  # one line and exit 2, not a poller's retry storm
    policy = policy_of(s.version_policy)
    labels = {str(k): int(v) for k, v in dict(s.version_labels).items()}
    if s.model_name:
        uri = storage.join(s.model_base, s.model_name)
        if not version_dirs(uri):
            log.warning("%s has no version with a saved_model.pb yet; waiting for one to be published", uri)
        return [ModelEntry(s.model_name, uri, policy, labels)]
    entries = discover_models(s.model_base, policy, labels)
    if not entries:
        raise ConfigError("serving.model_base", s.model_base, "No model with a complete version (a numeric directory "
                          "with saved_model.pb) in the bucket; export a model there first or set serving.model_name.")
    return entries


def _rest_tls_context(s: Any) -> Any:
    """The REST endpoint's TLS context, or None; unreadable PEM files are config errors."""
    if not s.rest_tls_cert:
        return None
    import ssl

    from orchestrator.serving.rest import tls_context

    try:
        return tls_context(s.rest_tls_cert, s.rest_tls_key, s.rest_tls_client_ca)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError("serving.rest_tls_cert", s.rest_tls_cert, f"Cannot use it with serving.rest_tls_key / "
                          f"rest_tls_client_ca ({e}); give PEM files: the certificate chain, its key, the client CA.") from None


class EmbeddedServer:
    """REST + gRPC TF-Serving-compatible server over a model repository (start / stop / wait)."""

    def __init__(self, s: Any):
        self.settings = s
        self.admin = AdminPolicy.from_settings(s)  # a missing token is a config error before any model loads
        self._rest_tls = _rest_tls_context(s)
        entries, source = model_source(s)
        self.manager = ModelManager(entries, batching=s.batching, warmup=s.warmup, entries_source=source,
                                    unload_grace_s=s.unload_grace_s)
        self.inflight = InflightLimiter(s.max_inflight_requests)  # shared: the cap covers REST and gRPC together
        self.metrics = ServingMetrics(self._version_states)  # counts REST and gRPC alike, scraped over REST
        self.manager.on_load = self.metrics.record_load
        self.rest = None
        self.grpc = None
        self.rest_port: Optional[int] = None
        self.grpc_port: Optional[int] = None
        self._rest_thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()
        self._wake = threading.Event()

    def start(self) -> "EmbeddedServer":
        """Load the models, then open the ports (so a client that can connect finds versions loaded)."""
        from orchestrator.serving.grpc_service import start_grpc
        from orchestrator.serving.rest import RestServer

        s = self.settings
        rest_tls = self._rest_tls
        self.manager.poll_once()
        self.rest = RestServer(s.host, s.rest_port, self.manager, allow_nonfinite=s.allow_nonfinite,
                               max_body_bytes=s.max_body_bytes, max_workers=s.rest_max_workers,
                               max_pending=s.rest_max_pending_connections,
                               read_timeout_s=s.rest_read_timeout_s, max_json_depth=s.max_json_depth,
                               max_request_elements=s.max_request_elements, inflight=self.inflight,
                               ssl_context=rest_tls, metrics=self.metrics,
                               metrics_path=s.monitoring.path if s.monitoring.prometheus else None)
        self.rest_port = self.rest.server_address[1]
        self._rest_thread = threading.Thread(target=self.rest.serve_forever, kwargs={"poll_interval": 0.2},
                                             name="rest", daemon=True)
        self._rest_thread.start()
        if s.grpc_port >= 0:
            self.grpc, self.grpc_port = start_grpc(self.manager, s.host, s.grpc_port, allow_nonfinite=s.allow_nonfinite,
                                                   max_workers=s.grpc_max_workers, tls_cert=s.grpc_tls_cert,
                                                   tls_key=s.grpc_tls_key, inflight=self.inflight,
                                                   max_request_elements=s.max_request_elements,
                                                   max_request_bytes=s.max_request_bytes,
                                                   tls_client_ca=s.grpc_tls_client_ca, admin=self.admin,
                                                   metrics=self.metrics)
        self.manager.start_polling(s.file_system_poll_wait_seconds)
        log.info("serving %s: REST %s://%s:%s%s  gRPC %s:%s%s; config reload %s", ", ".join(self.manager.model_names()),
                 "https" if rest_tls else "http", s.host, self.rest_port, " (client certificates)" if s.rest_tls_client_ca else "",
                 s.host, self.grpc_port, (" (TLS, client certificates)" if s.grpc_tls_client_ca else " (TLS)") if s.grpc_tls_cert else "",
                 "on" if self.admin.enable_reload else "off")
        if s.ready_file:
            write_text(Path(s.ready_file), json.dumps({"rest_port": self.rest_port, "grpc_port": self.grpc_port,
                                                         "pid": os.getpid(), "host": s.host}))
        return self

    def _version_states(self) -> Dict[str, List[Tuple[int, str]]]:
        """``{model: [(version, state), ...]}`` for the version gauges of the metrics page."""
        out: Dict[str, List[Tuple[int, str]]] = {}
        for name in self.manager.model_names():
            try:
                out[name] = [(v, st.state) for v, st in self.manager.status(name)]
            except RequestError:  # no version known yet, or removed while we looked
                out[name] = []
        return out

    def stop(self) -> None:
        """Close both endpoints and unload every model (idempotent)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._wake.set()
        if self.grpc is not None:
            self.grpc.stop(grace=2.0).wait(5)
        if self.rest is not None:
            self.rest.shutdown()
            self.rest.server_close()
        self.manager.stop()
        log.info("server stopped")

    def wait(self) -> None:
        """Block until SIGINT/SIGTERM (main thread) or :meth:`stop`."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self._wake.set())
        self._wake.wait()

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
