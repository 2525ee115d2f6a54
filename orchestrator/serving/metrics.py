"""Prometheus metrics of the embedded server, under the names ``tensorflow_model_server`` exports.

TF Serving turns its metric paths into Prometheus names by replacing ``/`` with ``:``, so dashboards and
alerts written for it query, for example:

- ``:tensorflow:serving:request_count{model_name, status}`` — a counter per model and result (``OK``,
  ``INVALID_ARGUMENT``, ``NOT_FOUND``, ``RESOURCE_EXHAUSTED``, ... TF's error code names), REST and gRPC.
- ``:tensorflow:serving:request_latency{model_name, API, entrypoint}`` — a histogram in microseconds of
  successful requests (``API``: Predict / Classify / Regress, ``entrypoint``: REST / GRPC), with TF
  Serving's buckets (10 µs × 1.8^i, 33 buckets).
- ``:tensorflow:cc:saved_model:load_latency{model_path}`` (microseconds spent loading SavedModels that
  loaded) and ``:tensorflow:cc:saved_model:load_attempt_count{model_path, status}`` (``success``/``fail``),
  TensorFlow's own loader metrics, which TF Serving exports too.
- ``:tensorflow:serving:model_warmup_latency{model_path, status}`` — a histogram in microseconds.

TF Serving has no gauge of which versions are loaded; tfscale adds two under its own prefix:
``tfscale_serving_model_version_state{model_name, version, state}`` (1 for each version's current state)
and ``tfscale_serving_model_latest_version{model_name}`` (the highest AVAILABLE version).

Rendering goes through ``prometheus_client`` (:meth:`ServingMetrics.exposition`); the counters carry TF
Serving's names without the ``_total`` suffix that client library gives counters by default.
"""
from __future__ import annotations

import bisect
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LOAD_LATENCY = ":tensorflow:cc:saved_model:load_latency"
LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"
WARMUP_LATENCY = ":tensorflow:serving:model_warmup_latency"
VERSION_STATE = "tfscale_serving_model_version_state"
LATEST_VERSION = "tfscale_serving_model_latest_version"
_COUNTERS = (REQUEST_COUNT, LOAD_LATENCY, LOAD_ATTEMPTS)

#: TF Serving's ``Buckets::Exponential(10, 1.8, 33)``: upper bounds in microseconds (about 20 minutes at the top).
LATENCY_BUCKETS_US: Tuple[float, ...] = tuple(10.0 * 1.8 ** i for i in range(33))

#: gRPC methods counted, and their ``API`` label.
GRPC_APIS = {"/tensorflow.serving.PredictionService/Predict": "Predict",
             "/tensorflow.serving.PredictionService/Classify": "Classify",
             "/tensorflow.serving.PredictionService/Regress": "Regress"}


class _Histogram:
    """Counts per bucket and the sum of observations (microseconds)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_US) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_US, value)] += 1
        self.total += value

    def buckets(self) -> List[Tuple[str, int]]:
        from prometheus_client.utils import floatToGoString

        out, running = [], 0
        for bound, n in zip(LATENCY_BUCKETS_US + (float("inf"),), self.counts):
            running += n
            out.append((floatToGoString(bound), running))
        return out


class ServingMetrics:
    """The server's metrics: fed by the REST handler, a gRPC interceptor and the model manager.

    ``versions`` (optional) returns ``{model_name: [(version, state), ...]}`` at scrape time for the
    version gauges. Thread-safe; one instance per server, with its own registry, so several servers in
    one process (tests, benchmarks) never mix their counts.
    """

    def __init__(self, versions: Optional[Callable[[], Dict[str, List[Tuple[int, str]]]]] = None):
        from prometheus_client import CollectorRegistry

        self._versions = versions
        self._lock = threading.Lock()
        self._requests: Dict[Tuple[str, str], int] = {}
        self._latency: Dict[Tuple[str, str, str], _Histogram] = {}
        self._load_us: Dict[str, float] = {}
        self._load_attempts: Dict[Tuple[str, str], int] = {}
        self._warmup: Dict[Tuple[str, str], _Histogram] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ----------------------------------------------------------------------------------- recording
    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """One answered request; like TF Serving, only successful ones enter the latency histogram."""
        with self._lock:
            self._requests[(model_name, status)] = self._requests.get((model_name, status), 0) + 1
            if status == "OK":
                self._latency.setdefault((model_name, api, entrypoint), _Histogram()).observe(seconds * 1e6)

    def record_load(self, model_path: str, ok: bool, load_seconds: float, warmup_seconds: Optional[float] = None) -> None:
        """One attempt to load (and warm up) the SavedModel version at ``model_path``."""
        status = "success" if ok else "fail"
        with self._lock:
            self._load_attempts[(model_path, status)] = self._load_attempts.get((model_path, status), 0) + 1
            if ok:
                self._load_us[model_path] = self._load_us.get(model_path, 0.0) + load_seconds * 1e6
            if warmup_seconds is not None:
                self._warmup.setdefault((model_path, "OK" if ok else "UNKNOWN"), _Histogram()).observe(warmup_seconds * 1e6)

    # ------------------------------------------------------------------------------------ exporting
    def describe(self) -> List[Any]:
        """Nothing up front: the registry is private, so names need no collision check."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families, for ``prometheus_client``."""
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

        def counter(name: str, doc: str, labels: Tuple[str, ...], values: Dict[Any, float]) -> Any:
            # A plain Metric keeps TF Serving's sample name (CounterMetricFamily would append _total).
            m = Metric(name, doc, "counter")
            for key, value in sorted(values.items()):
                key = key if isinstance(key, tuple) else (key,)
                m.add_sample(name, dict(zip(labels, key)), value)
            return m

        def histogram(name: str, doc: str, labels: List[str], values: Dict[Tuple[str, ...], _Histogram]) -> Any:
            m = HistogramMetricFamily(name, doc, labels=labels)
            for key, h in sorted(values.items()):
                m.add_metric(list(key), h.buckets(), h.total)
            return m

        with self._lock:
            requests = dict(self._requests)
            latency = {k: _copy(h) for k, h in self._latency.items()}
            load_us = dict(self._load_us)
            attempts = dict(self._load_attempts)
            warmup = {k: _copy(h) for k, h in self._warmup.items()}
        yield counter(REQUEST_COUNT, "The total number of requests.", ("model_name", "status"), requests)
        yield histogram(REQUEST_LATENCY, "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
                        ["model_name", "API", "entrypoint"], latency)
        yield counter(LOAD_LATENCY, "Latency in microseconds for SavedModels that were successfully loaded.",
                      ("model_path",), load_us)
        yield counter(LOAD_ATTEMPTS, "The number of times a SavedModel was successfully loaded.",
                      ("model_path", "status"), attempts)
        yield histogram(WARMUP_LATENCY, "Distribution of wall time (in microseconds) for warming up the model.",
                        ["model_path", "status"], warmup)
        if self._versions is None:
            return
        state = GaugeMetricFamily(VERSION_STATE, "1 for the current state of each model version (tfscale).",
                                  labels=["model_name", "version", "state"])
        latest = GaugeMetricFamily(LATEST_VERSION, "The highest AVAILABLE version of each model (tfscale).",
                                   labels=["model_name"])
        for name, versions in sorted(self._versions().items()):
            for version, st in versions:
                state.add_metric([name, str(version), st], 1)
            available = [v for v, st in versions if st == "AVAILABLE"]
            if available:
                latest.add_metric([name], max(available))
        yield state
        yield latest

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        from prometheus_client import generate_latest

        text = generate_latest(self.registry).decode()
        # prometheus_client names a counter family '<name>_total' in its HELP/TYPE lines; TF Serving's
        # counters (and therefore the samples above) have no such suffix, so the headers follow the samples.
        for name in _COUNTERS:
            text = text.replace(f"# HELP {name}_total ", f"# HELP {name} ").replace(f"# TYPE {name}_total ", f"# TYPE {name} ")
        return text.encode()


def _copy(h: _Histogram) -> _Histogram:
    c = _Histogram()
    c.counts, c.total = list(h.counts), h.total
    return c


def grpc_interceptor(metrics: ServingMetrics) -> Any:
    """A ``grpc.ServerInterceptor`` that counts and times Predict / Classify / Regress by model and result.

    Wrapping the handlers keeps the services free of bookkeeping: the result is the status code the call
    ended with, whether the handler returned or aborted.
    """
    import grpc

    class _MetricsInterceptor(grpc.ServerInterceptor):
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)
            api = GRPC_APIS.get(details.method)
            if handler is None or api is None or handler.unary_unary is None:
                return handler
            inner = handler.unary_unary

            def timed(request: Any, context: Any) -> Any:
                started = time.perf_counter()
                status = "UNKNOWN"
                try:
                    response = inner(request, context)
                    code = context.code()
                    status = "OK" if code is None else code.name
                    return response
                except BaseException:
                    code = context.code()
                    status = code.name if code is not None else "UNKNOWN"
                    raise
                finally:
                    metrics.record_request(request.model_spec.name, api, "GRPC", status, time.perf_counter() - started)

            return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)

    return _MetricsInterceptor()
