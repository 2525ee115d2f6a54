"""The REST API of TF Serving over a threaded HTTP/1.1 server (HTTPS, optionally with client certificates).

Routes: ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]`` (status), ``.../metadata``,
``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict``, and ``GET <prometheus path>`` (TF Serving's
metrics, see :mod:`orchestrator.serving.metrics`).
Errors are ``{"error": "..."}`` with 400 (bad request, including a malformed version such as ``/versions/x``),
404 (unknown model/version/label/route), 413 (body over ``max_body_bytes``), 429 (more than
``max_inflight_requests`` in flight) or 503 (batch queue full).
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

from orchestrator.serving.codec import decode_rest, encode_rest
from orchestrator.serving.limits import InflightLimiter, check_json_limits
from orchestrator.serving.manager import ModelManager
from orchestrator.serving.metrics import ServingMetrics
from orchestrator.serving.status import ErrorCode, RequestError, invalid, not_found

log = logging.getLogger("tfscale.serving")

_ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                    r"(?P<tail>/metadata|:predict|:classify|:regress)?/?$")


def _version(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()):  # str.isdigit() also accepts '²', which int() refuses
        raise invalid(f"Version '{text}' in the URL is not a number; use /versions/<N> or /labels/<label>")
    return int(text)


def status_json(manager: ModelManager, name: str, version: Optional[int], label: Optional[str]) -> Dict[str, Any]:
    """TF Serving's GetModelStatus answer as JSON."""
    return {"model_version_status": [
        {"version": str(v), "state": st.state, "status": {"error_code": st.error_code, "error_message": st.error}}
        for v, st in manager.status(name, version, label)]}


def metadata_json(manager: ModelManager, name: str, version: Optional[int], label: Optional[str]) -> Dict[str, Any]:
    """TF Serving's GetModelMetadata answer as JSON (signature_def map)."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    with manager.resolve(name, version, label) as lv:
        defs = get_model_metadata_pb2.SignatureDefMap()
        for k, v in lv.signature_defs().items():
            defs.signature_def[k].CopyFrom(v)
        return {"model_spec": {"name": name, "signature_name": "", "version": str(lv.version)},
                "metadata": {"signature_def": json_format.MessageToDict(defs, preserving_proto_field_name=True)}}


class Counters:
    """Request counts by route and HTTP status, exported in Prometheus text format."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, int], int] = {}

    def add(self, route: str, status: int) -> None:
        with self._lock:
            self._counts[(route, status)] = self._counts.get((route, status), 0) + 1

    def prometheus(self) -> str:
        lines = ["# TYPE tfscale_serving_requests_total counter"]
        with self._lock:
            for (route, status), n in sorted(self._counts.items()):
                lines.append(f'tfscale_serving_requests_total{{route="{route}",code="{status}"}} {n}')
        return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: TF Serving clients reuse connections
    # Headers and body leave in one segment, without Nagle: otherwise every keep-alive answer waits
    # for the client's delayed ACK (~40 ms).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: "RestServer"

    def setup(self) -> None:
        # A socket timeout bounds every read of the request line, headers and body: a client that stalls
        # mid-request is disconnected instead of holding a worker thread forever.
        self.timeout = self.server.read_timeout_s
        super().setup()

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("rest %s - " + fmt, self.address_string(), *args)

    # (model, API, start) of the inference request being answered: its answer is counted in the metrics.
    _call: Optional[Tuple[str, str, float]] = None

    def _observe(self, status: str) -> None:
        call, self._call = self._call, None
        if call is not None and self.server.metrics is not None:
            self.server.metrics.record_request(call[0], call[1], "REST", status, time.perf_counter() - call[2])

    def _send(self, status: int, payload: Any, content_type: str = "application/json", close: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        if status == 200:
            self._observe("OK")

    def _error(self, err: RequestError, close: bool = False) -> None:
        self.server.counters.add("error", err.code.http_status)
        self._observe(err.code.value[0])  # TF's error code name, as TF Serving's request_count status label
        self._send(err.code.http_status, {"error": err.message}, close=close)

    def _route(self):
        path = self.path.split("?", 1)[0]
        m = _ROUTE.match(path)
        if m is None:
            raise not_found(f"Malformed request: {self.command} {path}; "
                            "use /v1/models/<name>[/versions/<N>|/labels/<label>][/metadata|:predict]")
        return m.group("name"), _version(m.group("version")), m.group("label"), m.group("tail") or ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        try:
            if self.server.metrics_path and self.path.split("?", 1)[0] == self.server.metrics_path:
                self._send(200, self.server.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
                return
            name, version, label, tail = self._route()
            if tail == "":
                payload = status_json(self.server.manager, name, version, label)
            elif tail == "/metadata":
                payload = metadata_json(self.server.manager, name, version, label)
            else:
                raise RequestError(ErrorCode.INVALID_ARGUMENT, f"{tail[1:]} needs POST")
            self.server.counters.add("status" if tail == "" else "metadata", 200)
            self._send(200, payload)
        except RequestError as e:
            self._error(e)
        except Exception as e:  # the server stays up whatever a request does
            log.exception("GET %s failed", self.path)
            self._error(RequestError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))

    def do_POST(self) -> None:  # noqa: N802
        started, self._call = time.perf_counter(), None
        length_text = self.headers.get("Content-Length")
        if length_text is None or not (length_text.isascii() and length_text.isdigit()):
            self._error(RequestError(ErrorCode.INVALID_ARGUMENT, "A Content-Length header is required"), close=True)
            return
        length = int(length_text)
        if length > self.server.max_body_bytes:
            # Drain a moderately large body so the client reads the 413 instead of a reset connection;
            # a huge one is cut off. Either way the connection is closed afterwards.
            if length <= 16 * self.server.max_body_bytes:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            self._error(RequestError(ErrorCode.RESOURCE_EXHAUSTED, f"Request body of {length} bytes exceeds the "
                                     f"limit of {self.server.max_body_bytes} (serving.max_body_bytes)"), close=True)
            return
        try:
            raw = self.rfile.read(length)
        except (TimeoutError, OSError):
            self.close_connection = True  # the client stalled or vanished mid-body: nobody to answer
            return
        if len(raw) < length:
            self.close_connection = True
            return
        try:
            name, version, label, tail = self._route()
            if tail in (":predict", ":classify", ":regress"):
                self._call = (name, tail[1:].capitalize(), started)
            if tail != ":predict":
                if tail in (":classify", ":regress"):
                    raise RequestError(ErrorCode.UNIMPLEMENTED, f"{tail[1:]} is not supported by this server; use :predict")
                raise invalid(f"POST needs :predict at the end of the URL, got {self.path}")
            with self.server.inflight:
                check_json_limits(raw, self.server.max_json_depth, self.server.max_request_elements)
                try:
                    body = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                    raise invalid(f"JSON Parse error: {e}") from None
                answer = self.server.predict(name, version, label, body)
            self._send(200, answer)
            self.server.counters.add("predict", 200)
        except RequestError as e:
            self._error(e)
        except Exception as e:
            log.exception("POST %s failed", self.path)
            self._error(RequestError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))


def tls_context(cert: str, key: str, client_ca: Optional[str] = None) -> Any:
    """A server-side TLS context (TLS 1.2+); with ``client_ca`` clients must present a certificate it signed."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class RestServer(ThreadingHTTPServer):
    """The REST endpoint bound to ``(host, port)`` (port 0 picks a free one; see ``server_port``)."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, host: str, port: int, manager: ModelManager, *, allow_nonfinite: bool, max_body_bytes: int,
                 metrics_path: Optional[str] = "/monitoring/prometheus/metrics", max_workers: int = 32,
                 read_timeout_s: float = 10.0, max_json_depth: int = 64, max_request_elements: int = 1 << 24,
                 inflight: Optional[InflightLimiter] = None, ssl_context: Optional[Any] = None,
                 metrics: Optional[ServingMetrics] = None):
        super().__init__((host, port), _Handler)
        self.ssl_context = ssl_context  # HTTPS: each connection's handshake runs in its worker, not in accept()
        # A fixed pool instead of a thread per connection: connections past max_workers wait in the
        # pool's queue (their sockets only), and read_timeout_s frees workers held by stalled clients.
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rest")
        self._open: set = set()
        self._open_lock = threading.Lock()
        self.read_timeout_s = read_timeout_s
        self.max_json_depth = max_json_depth
        self.max_request_elements = max_request_elements
        self.inflight = inflight or InflightLimiter(64)
        self.manager = manager
        self.allow_nonfinite = allow_nonfinite
        self.max_body_bytes = max_body_bytes
        self.metrics_path = metrics_path  # None: no Prometheus endpoint (the monitoring config turned it off)
        self.metrics = metrics
        self.counters = Counters()

    def metrics_text(self) -> bytes:
        """The Prometheus page: TF Serving's metrics (REST and gRPC), then the REST route counts."""
        head = self.metrics.exposition() if self.metrics is not None else b""
        return head + self.counters.prometheus().encode()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to the worker pool (ThreadingHTTPServer would start a thread for each)."""
        self._pool.submit(self._serve_connection, request, client_address)

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            if self.ssl_context is not None:
                plain = request
                try:
                    # The handshake is bounded by the read timeout, so a silent client cannot hold the worker;
                    # with client-certificate verification on, a client without a valid certificate ends here.
                    plain.settimeout(self.read_timeout_s)
                    request = self.ssl_context.wrap_socket(plain, server_side=True)
                except (OSError, ValueError) as e:
                    log.info("rest %s: TLS handshake failed: %s", client_address[0], e)
                    self.shutdown_request(plain)
                    return
                finally:
                    with self._open_lock:
                        self._open.discard(plain)
                        self._open.add(request)
            self.process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def server_close(self) -> None:
        """Close the listening socket and every open connection, so no worker waits out a keep-alive."""
        import socket

        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._open_lock:
            for conn in list(self._open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def predict(self, name: str, version: Optional[int], label: Optional[str], body: Any) -> Dict[str, Any]:
        """Answer one predict body."""
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object with \"instances\" or \"inputs\"")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid("'signature_name' must be a string")
        with self.manager.resolve(name, version, label) as lv:
            sig = lv.signature(signature_name)
            inputs, fmt = decode_rest(body, sig.inputs, self.allow_nonfinite)
            outputs = sig.run(inputs)
        return encode_rest(outputs, fmt)
