"""Errors of a serving request, with the REST status and gRPC code TF Serving would answer."""
from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """The failure classes a client can tell apart (TF Serving's ``tensorflow.error.Code`` subset)."""

    INVALID_ARGUMENT = ("INVALID_ARGUMENT", 400)
    NOT_FOUND = ("NOT_FOUND", 404)
    UNAUTHENTICATED = ("UNAUTHENTICATED", 401)
    PERMISSION_DENIED = ("PERMISSION_DENIED", 403)
    FAILED_PRECONDITION = ("FAILED_PRECONDITION", 400)
    RESOURCE_EXHAUSTED = ("RESOURCE_EXHAUSTED", 413)
    OVERLOADED = ("RESOURCE_EXHAUSTED", 429)  # too many requests in flight: retry later
    UNAVAILABLE = ("UNAVAILABLE", 503)
    UNIMPLEMENTED = ("UNIMPLEMENTED", 501)
    INTERNAL = ("INTERNAL", 500)

    @property
    def http_status(self) -> int:
        return self.value[1]

    @property
    def grpc_code(self):
        """The matching ``grpc.StatusCode``."""
        import grpc

        return getattr(grpc.StatusCode, self.value[0])


class RequestError(Exception):
    """A request the server refuses; the message says what was wrong and is sent to the client."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(message: str) -> RequestError:
    return RequestError(ErrorCode.NOT_FOUND, message)


def invalid(message: str) -> RequestError:
    return RequestError(ErrorCode.INVALID_ARGUMENT, message)
