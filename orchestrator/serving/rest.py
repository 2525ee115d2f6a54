"""The REST API of TF Serving over a threaded HTTP/1.1 server (HTTPS, optionally with client certificates).

Routes: ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]`` (status), ``.../metadata``,
``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict`` (and ``:classify`` / ``:regress`` on a version
exported with those signatures, see :mod:`orchestrator.serving.examples`), and ``GET <prometheus path>`` (TF Serving's
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
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

from orchestrator.serving import examples
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


def _route(method: str, path: str) -> Tuple[str, Optional[int], Optional[str], str]:
    """``(model, version, label, tail)`` of a ``/v1/models/...`` path; NOT_FOUND for any other path."""
    path = path.split("?", 1)[0]
    m = _ROUTE.match(path)
    if m is None:
        raise not_found(f"Malformed request: {method} {path}; "
                        "use /v1/models/<name>[/versions/<N>|/labels/<label>][/metadata|:predict|:classify|:regress]")
    return m.group("name"), _version(m.group("version")), m.group("label"), m.group("tail") or ""


@dataclass(frozen=True)
class Reply:
    """One REST answer: HTTP status, body and content type."""

    status: int
    body: bytes
    content_type: str = "application/json"


class RestApi:
    """TF Serving's REST answers over a :class:`ModelManager`, whatever HTTP server carries the requests.

    The embedded server's worker threads (:class:`RestServer`) and each Ray Serve replica
    (:mod:`orchestrator.serving.ray_replica`) hand it a request's method, path and body, so both answer
    with the same paths, bodies, status codes and error bodies. Reading the request off the wire (and the
    413 for a body over ``max_body_bytes``, see :meth:`body_too_large`) is the carrier's part.
    """

    def __init__(self, manager: ModelManager, *, allow_nonfinite: bool, max_body_bytes: int,
                 metrics_path: Optional[str] = "/monitoring/prometheus/metrics", max_json_depth: int = 64,
                 max_request_elements: int = 1 << 24, inflight: Optional[InflightLimiter] = None,
                 metrics: Optional[ServingMetrics] = None):
        self.max_json_depth = max_json_depth
        self.max_request_elements = max_request_elements
        self.inflight = inflight or InflightLimiter(64)
        self.manager = manager
        self.allow_nonfinite = allow_nonfinite
        self.max_body_bytes = max_body_bytes
        self.metrics_path = metrics_path  # None: no Prometheus endpoint (the monitoring config turned it off)
        self.metrics = metrics
        self.counters = Counters()

    def error(self, err: RequestError) -> Reply:
        """``{"error": message}`` with the HTTP status of the error's code."""
        self.counters.add("error", err.code.http_status)
        return Reply(err.code.http_status, json.dumps({"error": err.message}).encode())

    def body_too_large(self, length: int) -> RequestError:
        """The error for a body of ``length`` bytes over ``max_body_bytes`` (413)."""
        return RequestError(ErrorCode.RESOURCE_EXHAUSTED, f"Request body of {length} bytes exceeds the "
                            f"limit of {self.max_body_bytes} (serving.max_body_bytes)")

    def get(self, path: str) -> Reply:
        """Answer ``GET path``: model status, metadata or the metrics page."""
        try:
            if self.metrics_path and path.split("?", 1)[0] == self.metrics_path:
                return Reply(200, self.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
            name, version, label, tail = _route("GET", path)
            if tail == "":
                payload = status_json(self.manager, name, version, label)
            elif tail == "/metadata":
                payload = metadata_json(self.manager, name, version, label)
            else:
                raise RequestError(ErrorCode.INVALID_ARGUMENT, f"{tail[1:]} needs POST")
            self.counters.add("status" if tail == "" else "metadata", 200)
            return Reply(200, json.dumps(payload).encode())
        except RequestError as e:
            return self.error(e)
        except Exception as e:  # the server stays up whatever a request does
            log.exception("GET %s failed", path)
            return self.error(RequestError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))

    def post(self, path: str, raw: bytes, started: Optional[float] = None) -> Reply:
        """Answer ``POST path`` with the JSON body ``raw``: predict, classify or regress.

        An inference call's answer is counted in the metrics with its latency from ``started``
        (``time.perf_counter()`` when the request arrived; default now).
        """
        started = time.perf_counter() if started is None else started
        call: Optional[Tuple[str, str]] = None  # (model, API) of an inference request
        outcome = "OK"  # TF's error code name, as TF Serving's request_count status label
        try:
            name, version, label, tail = _route("POST", path)
            if tail in (":predict", ":classify", ":regress"):
                call = (name, tail[1:].capitalize())
            if tail not in (":predict", ":classify", ":regress"):
                raise invalid(f"POST needs :predict, :classify or :regress at the end of the URL, got {path}")
            with self.inflight:
                check_json_limits(raw, self.max_json_depth, self.max_request_elements)
                try:
                    body = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                    raise invalid(f"JSON Parse error: {e}") from None
                if tail == ":predict":
                    answer = self.predict(name, version, label, body)
                else:
                    answer = self.classify_or_regress(name, version, label, body, tail[1:])
            reply = Reply(200, json.dumps(answer).encode())
            self.counters.add(tail[1:], 200)
        except RequestError as e:
            outcome, reply = e.code.value[0], self.error(e)
        except Exception as e:
            log.exception("POST %s failed", path)
            outcome, reply = ErrorCode.INTERNAL.value[0], self.error(RequestError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))
        if call is not None and self.metrics is not None:
            self.metrics.record_request(call[0], call[1], "REST", outcome, time.perf_counter() - started)
        return reply

    def metrics_text(self) -> bytes:
        """The Prometheus page: TF Serving's metrics (REST and gRPC), then the REST route counts."""
        head = self.metrics.exposition() if self.metrics is not None else b""
        return head + self.counters.prometheus().encode()

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

    def classify_or_regress(self, name: str, version: Optional[int], label: Optional[str], body: Any,
                            method: str) -> Dict[str, Any]:
        """Answer one classify or regress body (``method``) in TF Serving's JSON format."""
        signature_name, serialized = examples.decode_json(body, method, self.allow_nonfinite)
        with self.manager.resolve(name, version, label) as lv:
            results = examples.run_method(lv.signature(signature_name), serialized, method, lv.method_names())
        return examples.results_json(results)


class _Handler(BaseHTTPRequestHandler):
    """One connection of :class:`RestServer`: reads requests off the socket, answers with its :class:`RestApi`."""

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

    def _reply(self, reply: Reply, close: bool = False) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(reply.body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply(self.server.get(self.path))

    def do_POST(self) -> None:  # noqa: N802
        started = time.perf_counter()
        length_text = self.headers.get("Content-Length")
        if length_text is None or not (length_text.isascii() and length_text.isdigit()):
            self._reply(self.server.error(RequestError(ErrorCode.INVALID_ARGUMENT, "A Content-Length header is required")),
                        close=True)
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
            self._reply(self.server.error(self.server.body_too_large(length)), close=True)
            return
        try:
            raw = self.rfile.read(length)
        except (TimeoutError, OSError):
            self.close_connection = True  # the client stalled or vanished mid-body: nobody to answer
            return
        if len(raw) < length:
            self.close_connection = True
            return
        self._reply(self.server.post(self.path, raw, started))


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


class RestServer(ThreadingHTTPServer, RestApi):
    """The REST endpoint bound to ``(host, port)`` (port 0 picks a free one; see ``server_port``)."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, host: str, port: int, manager: ModelManager, *, allow_nonfinite: bool, max_body_bytes: int,
                 metrics_path: Optional[str] = "/monitoring/prometheus/metrics", max_workers: int = 32,
                 read_timeout_s: float = 10.0, max_json_depth: int = 64, max_request_elements: int = 1 << 24,
                 inflight: Optional[InflightLimiter] = None, ssl_context: Optional[Any] = None,
                 metrics: Optional[ServingMetrics] = None):
        ThreadingHTTPServer.__init__(self, (host, port), _Handler)
        RestApi.__init__(self, manager, allow_nonfinite=allow_nonfinite, max_body_bytes=max_body_bytes,
                         metrics_path=metrics_path, max_json_depth=max_json_depth,
                         max_request_elements=max_request_elements, inflight=inflight, metrics=metrics)
        self.ssl_context = ssl_context  # HTTPS: each connection's handshake runs in its worker, not in accept()
        # A fixed pool instead of a thread per connection: connections past max_workers wait in the
        # pool's queue (their sockets only), and read_timeout_s frees workers held by stalled clients.
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rest")
        self._open: set = set()
        self._open_lock = threading.Lock()
        self.read_timeout_s = read_timeout_s

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
