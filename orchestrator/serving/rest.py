"""The REST API of TF Serving over a threaded HTTP/1.1 server (HTTPS, optionally with client certificates).

Routes: ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]`` (status), ``.../metadata``,
``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict`` (and ``:classify`` / ``:regress`` on a version
exported with those signatures, see :mod:`orchestrator.serving.examples`), and ``GET <prometheus path>`` (TF Serving's
metrics, see :mod:`orchestrator.serving.metrics`).
Errors are ``{"error": "..."}`` with 400 (bad request, including a malformed version such as ``/versions/x``),
404 (unknown model/version/label/route), 408 (request not received in time, see below), 413 (body over
``max_body_bytes``), 429 (more than ``max_inflight_requests`` in flight) or 503 (batch queue full, or too many
connections waiting for a worker).

Limits of the embedded server (:class:`RestServer`), each a ``serving.`` setting:

* ``rest_max_workers`` threads serve connections, one connection each at a time (keep-alive included).
* ``rest_max_pending_connections`` (default 4 x ``rest_max_workers``) accepted connections may wait for a free
  worker. One more is answered ``503`` at once by the accepting thread (a non-blocking send; closed without an
  answer over HTTPS, or when the send would block) and closed, so a flood of connections holds bounded sockets.
* ``rest_read_timeout_s`` is a deadline for a whole request: its request line, headers and body must arrive
  within that long of its first byte, however slowly they trickle in; past it the connection is answered ``408``
  (when nothing of an answer was sent yet) and closed. Between requests an idle keep-alive connection waits up
  to ``rest_read_timeout_s`` for the next one, and the TLS handshake has the same bound.
* ``max_inflight_requests`` counts predict, classify, regress and metadata requests (REST and gRPC share the
  limiter); past it they get ``429``. Model status (what readiness probes ask) and the Prometheus page are
  outside the cap, so health checks and monitoring still reach a busy server.
"""
from __future__ import annotations

import io
import json
import logging
import re
import socket
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
        """Answer ``GET path``: model status, metadata (under the in-flight cap) or the metrics page."""
        try:
            if self.metrics_path and path.split("?", 1)[0] == self.metrics_path:
                return Reply(200, self.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
            name, version, label, tail = _route("GET", path)
            if tail not in ("", "/metadata"):
                raise RequestError(ErrorCode.INVALID_ARGUMENT, f"{tail[1:]} needs POST")
            if tail == "":
                # Not capped: it only reads the versions' states, and readiness probes ask it (a pod that is
                # merely busy must not be taken out of its service).
                payload = status_json(self.manager, name, version, label)
            else:
                with self.inflight:  # the same cap as inference: a flood of metadata calls cannot crowd it out
                    payload = metadata_json(self.manager, name, version, label)
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


def _closing_answer(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer ``{"error": message}`` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


def _send_nowait(sock: Any, data: bytes) -> None:
    """Send ``data`` if the socket's buffer takes it now; never blocks (the connection is closed next)."""
    try:
        sock.settimeout(0.0)
        sock.send(data)
    except OSError:  # would block, reset, or TLS wanting a read: the close alone tells the client
        pass


class _RequestClock(io.RawIOBase):
    """A connection's reads, under one deadline per request (the raw stream under the handler's ``rfile``).

    Between requests a read waits up to ``timeout_s`` (an idle keep-alive connection); the first bytes of a
    request start its deadline, ``timeout_s`` later, and every read until the request has been read waits
    only for what is left of it, so a client trickling its request in cannot hold a worker past the deadline.
    """

    def __init__(self, sock: Any, timeout_s: float):
        super().__init__()
        self._sock = sock
        self.timeout_s = timeout_s
        self._deadline: Optional[float] = None  # set while a request is being read
        self._arm = False  # the next bytes read are the first of a request: they start the deadline
        self.expired = False  # the current request ran past its deadline

    def readable(self) -> bool:
        return True

    def await_request(self) -> None:
        """Between requests: the next read waits one ``timeout_s`` for the next request's first bytes."""
        self._deadline, self._arm, self.expired = None, True, False

    def request_started(self) -> None:
        """The request's first bytes are here (read now, or left over from the previous read)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout_s
        self._arm = False

    def request_read(self) -> None:
        """The request is read: no deadline while it is answered; sends are bounded by ``timeout_s`` each."""
        if self._deadline is not None or self._arm:
            self._deadline, self._arm = None, False
            self._sock.settimeout(self.timeout_s)

    def readinto(self, buffer: Any) -> int:
        if self._deadline is None:
            self._sock.settimeout(self.timeout_s)
            n = self._sock.recv_into(buffer)
            if n and self._arm:
                self.request_started()
            return n
        left = self._deadline - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError(f"request not received within {self.timeout_s:g} s of its first byte")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self.expired = True
            raise


class _Handler(BaseHTTPRequestHandler):
    """One connection of :class:`RestServer`: reads requests off the socket, answers with its :class:`RestApi`."""

    protocol_version = "HTTP/1.1"  # keep-alive: TF Serving clients reuse connections
    # Headers and body leave in one segment, without Nagle: otherwise every keep-alive answer waits
    # for the client's delayed ACK (~40 ms).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: "RestServer"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s
        super().setup()
        # Reads go through a clock that holds each request, not each read, to read_timeout_s: a client that
        # stalls or trickles its request is disconnected instead of holding a worker thread.
        self.rfile.close()
        self._clock = _RequestClock(self.connection, self.server.read_timeout_s)
        self.rfile = io.BufferedReader(self._clock)
        self._answering = False

    def handle_one_request(self) -> None:
        self._clock.await_request()
        self._answering = False
        self.requestline, self.request_version, self.command = "", self.protocol_version, ""
        try:
            # The idle wait for the next request; bytes already buffered (pipelining) return at once.
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except OSError:  # idle past read_timeout_s (TimeoutError), or the client went away
            self.close_connection = True
            return
        self._clock.request_started()
        super().handle_one_request()
        if self._clock.expired:
            self.close_connection = True
            if not self._answering:
                self._send_timeout()

    def _send_timeout(self) -> None:
        """408 on a request past its deadline: one non-blocking send, as the client may not be reading."""
        self.server.counters.add("error", 408)
        _send_nowait(self.connection, _closing_answer(
            408, "Request Timeout", f"Request not received within {self.server.read_timeout_s:g} s of its first "
            "byte (serving.rest_read_timeout_s); send the whole request at once"))

    def send_response_only(self, code: int, message: Optional[str] = None) -> None:
        # Every answer (ours and http.server's own errors) starts here: the request has been read.
        self._clock.request_read()
        self._answering = True
        super().send_response_only(code, message)

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
                 max_pending: Optional[int] = None, read_timeout_s: float = 10.0, max_json_depth: int = 64,
                 max_request_elements: int = 1 << 24, inflight: Optional[InflightLimiter] = None,
                 ssl_context: Optional[Any] = None, metrics: Optional[ServingMetrics] = None):
        ThreadingHTTPServer.__init__(self, (host, port), _Handler)
        RestApi.__init__(self, manager, allow_nonfinite=allow_nonfinite, max_body_bytes=max_body_bytes,
                         metrics_path=metrics_path, max_json_depth=max_json_depth,
                         max_request_elements=max_request_elements, inflight=inflight, metrics=metrics)
        self.ssl_context = ssl_context  # HTTPS: each connection's handshake runs in its worker, not in accept()
        # A fixed pool instead of a thread per connection: at most max_pending connections wait in the pool's
        # queue (their sockets only; more are refused), and read_timeout_s frees workers held by slow clients.
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rest")
        self.max_workers = max_workers
        self.max_pending = 4 * max_workers if max_pending is None else max_pending
        self._held = 0  # connections being served or waiting for a worker, at most max_workers + max_pending
        self._open: set = set()
        self._open_lock = threading.Lock()
        self.read_timeout_s = read_timeout_s
        self._refusal = _closing_answer(
            503, "Service Unavailable", f"Too many connections waiting for a REST worker ({self.max_workers} busy "
            f"and {self.max_pending} waiting; serving.rest_max_workers, serving.rest_max_pending_connections); "
            "retry later")
        self._refused = 0  # refused since the last warning
        self._refusal_logged = 0.0

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to the worker pool (ThreadingHTTPServer would start a thread for each), or refuse
        it at once when ``max_pending`` connections already wait for a worker."""
        with self._open_lock:
            admitted = self._held < self.max_workers + self.max_pending
            if admitted:
                self._held += 1
                self._open.add(request)  # closed by server_close even if no worker ever takes it
        if not admitted:
            self._refuse(request, client_address)
            return
        try:
            self._pool.submit(self._serve_connection, request, client_address)
        except RuntimeError:  # the pool is shut down: the server is closing
            with self._open_lock:
                self._held -= 1
                self._open.discard(request)
            self.shutdown_request(request)

    def _refuse(self, request: Any, client_address: Any) -> None:
        """503 and close, from the accepting thread: never waits on the client."""
        self.counters.add("error", 503)
        if self.ssl_context is None:  # over HTTPS an answer needs a handshake: closing is the answer
            try:
                request.setblocking(False)
                request.recv(1 << 16)  # what already arrived: closing over unread bytes would reset the connection
            except OSError:
                pass
            _send_nowait(request, self._refusal)
        self.shutdown_request(request)
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= 10.0:
            log.warning("rest: refused %d connection(s) from %s and others: %d busy and %d waiting for a worker "
                        "(serving.rest_max_workers, serving.rest_max_pending_connections)",
                        self._refused, client_address[0], self.max_workers, self.max_pending)
            self._refused, self._refusal_logged = 0, now

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            if self.ssl_context is not None:
                plain = request
                try:
                    # The socket timeout bounds the whole handshake (not each read), so a silent or trickling
                    # client cannot hold the worker;
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
                self._held -= 1

    def server_close(self) -> None:
        """Close the listening socket and every open connection, so no worker waits out a keep-alive."""
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._open_lock:
            for conn in list(self._open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
