"""Bounds on what one request may cost the server: JSON nesting and size, tensor sizes, requests in flight.

Every check here runs before the request is decoded or materialised, so an oversized or hostile request
is refused for the price of reading it.
"""
from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

from orchestrator.serving.status import ErrorCode, RequestError, invalid

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # unrolled: linear on long strings
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")  # deleted by bytes.translate


def check_json_limits(raw: bytes, max_depth: int, max_elements: int) -> None:
    """INVALID_ARGUMENT if the JSON text ``raw`` nests deeper than ``max_depth`` or holds more than
    ``max_elements`` values; Python's decoder would recurse once per level (RecursionError) and build
    every value, so this is measured on the bytes (strings removed) with vectorised counting."""
    outside = _JSON_STRING.sub(b'""', raw) if b'"' in raw else raw
    brackets = np.frombuffer(outside.translate(None, _NOT_BRACKET), dtype=np.uint8)
    if brackets.size:
        steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1).astype(np.int32)
        depth = int(np.cumsum(steps).max())
        if depth > max_depth:
            raise invalid(f"JSON Parse error: nesting depth {depth} exceeds the limit of {max_depth} (serving.max_json_depth)")
    elements = outside.count(b",") + 1
    if elements > max_elements:
        raise invalid(f"JSON Parse error: about {elements} values exceed the limit of {max_elements} "
                      "(serving.max_request_elements)")


# Bytes per element of TensorProto dtypes with a fixed width (tensorflow/core/framework/types.proto).
_FIXED_WIDTH = {1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 9: 8, 10: 1, 14: 2, 17: 2, 19: 2, 22: 4, 23: 8, 8: 8, 18: 16}
# The repeated ``*_val`` field that carries each dtype when ``tensor_content`` is empty.
_VAL_FIELD = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val",
              9: "int64_val", 10: "bool_val", 14: "half_val", 17: "int_val", 19: "half_val", 22: "uint32_val",
              23: "uint64_val", 7: "string_val", 8: "scomplex_val", 18: "dcomplex_val"}


def check_tensor_proto(key: str, proto: Any, max_elements: int, max_bytes: int) -> int:
    """Refuse a ``TensorProto`` whose declared shape disagrees with its content or is too large, before
    ``tf.make_ndarray`` allocates it; returns the declared element count. A proto with one value and a
    larger shape is TF's splat form, which would allocate the whole shape: it is held to the same limits."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid(f"input '{key}': tensor_shape {dims} has a negative dimension")
    declared = 1
    for d in dims:
        declared *= d
        if declared > max_elements:
            raise invalid(f"input '{key}': tensor_shape {dims} declares more than {max_elements} elements "
                          "(serving.max_request_elements)")
    width = _FIXED_WIDTH.get(proto.dtype)
    if width is not None and declared * width > max_bytes:
        raise invalid(f"input '{key}': {declared * width} bytes exceed the limit of {max_bytes} (serving.max_request_bytes)")
    if proto.tensor_content:
        if width is None or len(proto.tensor_content) != declared * width:
            raise invalid(f"input '{key}': tensor_content holds {len(proto.tensor_content)} bytes, but tensor_shape "
                          f"{dims} of this dtype needs {declared * (width or 0)}")
        return declared
    field = _VAL_FIELD.get(proto.dtype)
    if field is None:
        raise invalid(f"input '{key}': TensorProto dtype {proto.dtype} is not supported")
    count = len(getattr(proto, field))
    if field in ("scomplex_val", "dcomplex_val"):
        count //= 2
    if count != declared and not (count == 1 and declared > 0) and not (count == 0 and declared == 0):
        raise invalid(f"input '{key}': {field} holds {count} values, but tensor_shape {dims} declares {declared}")
    if field == "string_val" and count != declared:
        raise invalid(f"input '{key}': string_val holds {count} values, but tensor_shape {dims} declares {declared}")
    return declared


class InflightLimiter:
    """At most ``limit`` requests inside :meth:`slot` at once; the next one is refused, not queued, so a
    burst costs the server bounded memory and the client learns at once to back off."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self._lock = threading.Lock()
        self._active = 0

    def acquire(self) -> None:
        """Take a slot, or raise RESOURCE_EXHAUSTED (REST 429)."""
        with self._lock:
            if self._active >= self.limit:
                raise RequestError(ErrorCode.OVERLOADED, f"Too many requests in flight (limit {self.limit}, "
                                   "serving.max_inflight_requests); retry later")
            self._active += 1

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        with self._lock:
            self._active -= 1

    def __enter__(self) -> "InflightLimiter":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
