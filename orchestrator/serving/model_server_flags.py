"""``tensorflow_model_server``'s command-line flags, so ``tfscale serve`` runs its command lines unchanged.

A deployment script, a container's ``args`` or the launch plan that ``deploy=tf_serving`` prints can swap the
binary for ``tfscale serve`` and keep every flag::

    tfscale serve --port=8500 --rest_api_port=8501 --model_config_file=/models/models.config \\
        --enable_batching=true --batching_parameters_file=/models/batching_parameters.config \\
        --monitoring_config_file=/models/monitoring.config --file_system_poll_wait_seconds=1

Both ``--flag=value`` and ``--flag value`` are read (a boolean flag alone means true, ``--noflag`` false).
The text-format files (``--batching_parameters_file``, ``--monitoring_config_file``, ``--ssl_config_file``)
are parsed with TF Serving's own messages. Like ``tensorflow_model_server``, a server given these flags
listens on every interface unless ``serving.host`` is set, and ``--model_config_file`` wins over
``--model_name``/``--model_base_path``. A flag of ``tensorflow_model_server`` that tfscale does not implement,
or a misspelt one, is a one-line error naming it. No TensorFlow is imported here.
"""
from __future__ import annotations

import difflib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from orchestrator.errors import ConfigError

log = logging.getLogger("tfscale.serving")

DEFAULT_MONITORING_PATH = "/monitoring/prometheus/metrics"  # TF Serving's path when the config names none

#: Flags read, with their kind: int, bool, str (a value) or file (a path that must exist).
FLAGS: Dict[str, str] = {
    "port": "int", "rest_api_port": "int", "model_name": "str", "model_base_path": "str",
    "model_config_file": "file", "model_config_file_poll_wait_seconds": "int", "enable_batching": "bool",
    "batching_parameters_file": "file", "file_system_poll_wait_seconds": "int", "monitoring_config_file": "file",
    "ssl_config_file": "file", "enable_model_warmup": "bool", "rest_api_num_threads": "int", "grpc_max_threads": "int",
}

#: Flags of ``tensorflow_model_server`` that change behaviour tfscale does not have (told apart from typos).
NOT_IMPLEMENTED = frozenset({
    "grpc_socket_path", "rest_api_timeout_in_ms", "allow_version_labels_for_unavailable_models",
    "enable_per_model_batching_parameters", "max_num_load_retries", "load_retry_interval_micros",
    "flush_filesystem_caches", "tensorflow_session_parallelism", "tensorflow_session_config_file",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism", "use_alts_credentials",
    "platform_config_file", "per_process_gpu_memory_fraction", "saved_model_tags", "grpc_channel_arguments",
    "num_request_iterations_for_warmup", "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model",
    "num_tflite_pools", "num_tflite_interpreters_per_pool", "num_tflite_interpreters", "use_tflite_model",
    "enable_signature_method_name_check", "xla_cpu_compilation_enabled", "enable_profiler",
    "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu", "enable_grpc_healthcheck_service",
    "version", "tfrt_batch_queue_size", "enable_batching_for_tflite",
})

_TRUE, _FALSE = ("true", "1", "yes", "t", "y"), ("false", "0", "no", "f", "n")


def take(argv: Sequence[str], i: int) -> Tuple[str, str, int]:
    """Read the flag at ``argv[i]`` (and its value from ``argv[i + 1]`` if written apart).

    Returns ``(name, raw value, index of the next argument)``; an unknown or unimplemented flag, or one
    missing its value, is a :class:`ConfigError` naming it.
    """
    token = argv[i]
    name, eq, value = token.lstrip("-").partition("=")
    kind = FLAGS.get(name)
    if kind is None and name.startswith("no") and FLAGS.get(name[2:]) == "bool" and not eq:
        return name[2:], "false", i + 1
    if kind is None:
        if name in NOT_IMPLEMENTED:
            raise ConfigError(f"--{name}", value or None, "It is a tensorflow_model_server flag that tfscale serve does "
                              "not implement; remove it. Supported flags: " + ", ".join(f"--{f}" for f in FLAGS) + ".")
        near = difflib.get_close_matches(name, list(FLAGS), n=1)
        hint = f"Did you mean --{near[0]}? " if near else ""
        raise ConfigError(token.partition("=")[0], value or None, f"Not a flag of tfscale serve. {hint}Flags: -cd DIR, "
                          "--cfg, --help and tensorflow_model_server's " + ", ".join(f"--{f}" for f in FLAGS) + ".")
    if eq:
        return name, value, i + 1
    nxt = argv[i + 1] if i + 1 < len(argv) else None
    if kind == "bool":
        if nxt is not None and nxt.lower() in _TRUE + _FALSE:
            return name, nxt, i + 2
        return name, "true", i + 1
    if nxt is None or nxt.startswith("--"):
        raise ConfigError(f"--{name}", None, f"It needs a value: --{name}=VALUE or --{name} VALUE.")
    return name, nxt, i + 2


@dataclass
class ModelServerFlags:
    """The ``tensorflow_model_server`` flags of one command line, applied onto a composed ``serving`` config.

    ``--ssl_config_file`` holds PEM texts, while the server reads PEM files: they are written to a private
    temporary directory, which :meth:`close` removes (the server has read them once it listens).
    """

    values: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)  # what the server should log once logging is set up
    _tmp: Optional[str] = None

    def __bool__(self) -> bool:
        return bool(self.values)

    def apply(self, s: Any, host_given: bool) -> List[str]:
        """Set the fields of ServingConfig ``s`` that the flags name; returns (and keeps) notes worth logging."""
        v = self.values
        notes = self.notes = []
        if not v:
            return notes
        if not host_given:
            s.host = "0.0.0.0"
            notes.append("tensorflow_model_server flags given: listening on every interface as it does "
                         "(serving.host=127.0.0.1 keeps the server local)")
        if "port" in v:
            s.grpc_port = self._port("port", v["port"])
        if "rest_api_port" in v:
            port = self._port("rest_api_port", v["rest_api_port"])
            if port == 0:
                raise ConfigError("--rest_api_port", 0, "tfscale serve always serves REST (its status route is the "
                                  "readiness probe and its metrics page lives there); give a port number.")
            s.rest_port = port
        if "model_config_file" in v:
            s.model_config_file = self._file("model_config_file", v["model_config_file"])
            if "model_base_path" in v or "model_name" in v:
                notes.append("--model_config_file is given: --model_name and --model_base_path are ignored, as "
                             "tensorflow_model_server ignores them")
        else:
            if "model_base_path" in v:
                s.model_base_path = v["model_base_path"]
                s.model_name = v.get("model_name", "default")
            elif "model_name" in v:
                s.model_name = v["model_name"]
        if "file_system_poll_wait_seconds" in v:
            s.file_system_poll_wait_seconds = float(self._int("file_system_poll_wait_seconds", v["file_system_poll_wait_seconds"]))
        if "model_config_file_poll_wait_seconds" in v:
            self._int("model_config_file_poll_wait_seconds", v["model_config_file_poll_wait_seconds"])
            notes.append("the config file is re-read on every repository poll (file_system_poll_wait_seconds); "
                         "--model_config_file_poll_wait_seconds has no separate effect")
        if "enable_batching" in v:
            s.batching.enabled = self._bool("enable_batching", v["enable_batching"])
        if "batching_parameters_file" in v:
            notes += self._batching(s, self._file("batching_parameters_file", v["batching_parameters_file"]))
        if "monitoring_config_file" in v:
            self._monitoring(s, self._file("monitoring_config_file", v["monitoring_config_file"]))
        if "ssl_config_file" in v:
            self._ssl(s, self._file("ssl_config_file", v["ssl_config_file"]))
        if "enable_model_warmup" in v:
            s.warmup = self._bool("enable_model_warmup", v["enable_model_warmup"])
        if "rest_api_num_threads" in v:
            s.rest_max_workers = self._int("rest_api_num_threads", v["rest_api_num_threads"])
        if "grpc_max_threads" in v:
            s.grpc_max_workers = self._int("grpc_max_threads", v["grpc_max_threads"])
        return notes

    def close(self) -> None:
        """Remove the PEM copies written for ``--ssl_config_file`` (idempotent)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # ------------------------------------------------------------------------------------ values
    @staticmethod
    def _int(name: str, value: str) -> int:
        text = value.strip()
        if not (text.isascii() and text.lstrip("-").isdigit()):
            raise ConfigError(f"--{name}", value, f"Use a whole number, e.g. --{name}=1.")
        return int(text)

    def _port(self, name: str, value: str) -> int:
        port = self._int(name, value)
        if not 0 <= port <= 65535:
            raise ConfigError(f"--{name}", value, "Use a TCP port in 1..65535.")
        return port

    @staticmethod
    def _bool(name: str, value: str) -> bool:
        text = value.strip().lower()
        if text not in _TRUE + _FALSE:
            raise ConfigError(f"--{name}", value, f"Use true or false, e.g. --{name}=true.")
        return text in _TRUE

    @staticmethod
    def _file(name: str, value: str) -> str:
        if not value or not os.path.isfile(value):
            raise ConfigError(f"--{name}", value, "No such file; give the path of an existing file.")
        return value

    @staticmethod
    def _parse(name: str, path: str, message_class: Any) -> Any:
        from google.protobuf import text_format

        try:
            return text_format.Parse(Path(path).read_text(), message_class())
        except (text_format.ParseError, UnicodeDecodeError) as e:
            raise ConfigError(f"--{name}", path, f"It is not a text-format {message_class.DESCRIPTOR.name} "
                              f"({str(e).splitlines()[0]}); fix the file.") from None

    def _batching(self, s: Any, path: str) -> List[str]:
        from orchestrator.serving.protos import batching_parameters_class

        msg = self._parse("batching_parameters_file", path, batching_parameters_class())
        for key in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
            if msg.HasField(key):
                setattr(s.batching, key, int(getattr(msg, key).value))
        ignored = [k for k in ("thread_pool_name", "allowed_batch_sizes", "pad_variable_length_inputs")
                   if (msg.HasField(k) if k == "thread_pool_name" else bool(getattr(msg, k)))]
        return [f"{path}: {', '.join(ignored)} not used by the embedded batcher"] if ignored else []

    def _monitoring(self, s: Any, path: str) -> None:
        from orchestrator.serving.protos import monitoring_config_class

        msg = self._parse("monitoring_config_file", path, monitoring_config_class())
        s.monitoring.prometheus = bool(msg.prometheus_config.enable)
        s.monitoring.path = msg.prometheus_config.path or DEFAULT_MONITORING_PATH

    def _ssl(self, s: Any, path: str) -> None:
        from orchestrator.serving.protos import ssl_config_class

        msg = self._parse("ssl_config_file", path, ssl_config_class())
        if not (msg.server_key and msg.server_cert):
            raise ConfigError("--ssl_config_file", path, "It needs both server_key and server_cert (PEM texts).")
        if msg.client_verify and not msg.custom_ca:
            raise ConfigError("--ssl_config_file", path, "client_verify: true needs custom_ca, the PEM of the CA that "
                              "signs client certificates.")
        self._tmp = tempfile.mkdtemp(prefix="tfscale-serve-tls-")  # mode 0700: only this user reads the key

        def write(name: str, text: str) -> str:
            target = os.path.join(self._tmp, name)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return target

        # TF Serving's SSLConfig secures gRPC only; its REST port stays plain HTTP (serving.rest_tls_* adds HTTPS).
        s.grpc_tls_key = write("server_key.pem", msg.server_key)
        s.grpc_tls_cert = write("server_cert.pem", msg.server_cert)
        s.grpc_tls_client_ca = write("custom_ca.pem", msg.custom_ca) if msg.client_verify else None
