"""Who may reload the served models at run time, and which directories a reload may point at.

gRPC ``ModelService.HandleReloadConfigRequest`` replaces every served model; SavedModels run arbitrary graph
ops (file reads and writes among them), so a reload is code execution as the server's user. It is refused
unless ``serving.admin.enable_reload`` is set; then the caller proves itself with a bearer token
(``authorization: Bearer <token>`` metadata, compared in constant time, never logged) or with a client
certificate the gRPC TLS handshake verified whose name is in ``serving.admin.client_names``; and each
``base_path`` must resolve (symlinks, ``..``) to a directory under ``serving.admin.allowed_roots``.

No TensorFlow or gRPC import here: the policy is plain data checked by the gRPC servicer.
"""
from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

from orchestrator.artifacts import storage
from orchestrator.errors import ConfigError
from orchestrator.serving.repository import ModelEntry
from orchestrator.serving.status import ErrorCode, RequestError

log = logging.getLogger("tfscale.serving")


@dataclass(frozen=True)
class AdminPolicy:
    """The settled admin rules of one server: whether reload is on, the accepted credentials, the roots."""

    enable_reload: bool
    token: Optional[str]
    client_names: Tuple[str, ...]
    allowed_roots: Tuple[str, ...]  # resolved local directories or normalised bucket URIs

    @classmethod
    def from_settings(cls, s: Any) -> "AdminPolicy":
        """The policy of a :class:`~orchestrator.config.serving.ServingConfig`; ConfigError if reload is on without credentials."""
        a = s.admin
        served = [s.model_base] + ([s.model_base_path] if getattr(s, "model_base_path", None) else [])
        roots = tuple(_normalise_root(r) for r in (list(a.allowed_roots) or served))
        if not a.enable_reload:
            return cls(False, None, (), roots)
        token = None
        if a.token_file:
            try:
                with open(a.token_file, encoding="utf-8") as f:
                    token = f.read().strip() or None
            except OSError as e:
                raise ConfigError("serving.admin.token_file", a.token_file, f"Cannot read it ({e.strerror}); "
                                  "write the token to a file the server's user can read.") from None
            if token is None:
                raise ConfigError("serving.admin.token_file", a.token_file, "The file is empty; write the token into it.")
        elif a.token_env and os.environ.get(a.token_env, "").strip():
            token = os.environ[a.token_env].strip()
        if token is not None and len(token) < 16:
            raise ConfigError("serving.admin.token_file" if a.token_file else "serving.admin.token_env",
                              a.token_file or a.token_env, "The token is shorter than 16 characters; use a random one, "
                              "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'.")
        names = tuple(str(n) for n in a.client_names)
        if token is None and not names:
            raise ConfigError("serving.admin.enable_reload", True, "Reload needs a credential: set "
                              f"serving.admin.token_file, export {a.token_env or 'the variable named by serving.admin.token_env'}, "
                              "or list serving.admin.client_names (with serving.grpc_tls_client_ca).")
        return cls(True, token, names, roots)

    def authorize(self, metadata: Iterable[Tuple[str, Any]], auth_context: Mapping[str, Sequence[bytes]], peer: str) -> str:
        """How the caller is allowed (``"token"`` or ``"certificate <name>"``); RequestError if it is not."""
        if not self.enable_reload:
            raise RequestError(ErrorCode.PERMISSION_DENIED, "Config reload over gRPC is off on this server; start it with "
                               "serving.admin.enable_reload=true and a token (serving.admin.token_file) to allow it")
        presented = [str(v) for k, v in metadata if k.lower() == "authorization"]
        if self.token is not None and presented:
            scheme, _, value = presented[-1].strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode()):
                return "token"
            log.warning("reload refused for %s: wrong token", peer)
            raise RequestError(ErrorCode.UNAUTHENTICATED, "The reload token is wrong; send metadata "
                               "'authorization: Bearer <token>' with the token of serving.admin.token_file")
        if self.client_names:
            names = [n.decode(errors="replace") for key in ("x509_common_name", "x509_subject_alternative_name")
                     for n in auth_context.get(key, ())]
            allowed = next((n for n in names if n in self.client_names or "*" in self.client_names), None)
            if allowed is not None:
                return f"certificate {allowed}"
            if names:
                log.warning("reload refused for %s: certificate names %s not in serving.admin.client_names", peer, names)
                raise RequestError(ErrorCode.PERMISSION_DENIED, f"Client certificate names {names} are not in "
                                   "serving.admin.client_names")
        log.warning("reload refused for %s: no credential", peer)
        raise RequestError(ErrorCode.UNAUTHENTICATED, "Config reload needs a credential: metadata 'authorization: Bearer "
                           "<token>' or a client certificate named in serving.admin.client_names")

    def check_paths(self, entries: List[ModelEntry]) -> None:
        """RequestError unless every entry's ``base_path`` resolves to somewhere under an allowed root."""
        for e in entries:
            if not self._allowed(e.base_path):
                real = "" if storage.is_remote(e.base_path) or not e.base_path else os.path.realpath(e.base_path)
                shown = f"{e.base_path} (= {real})" if real and real != e.base_path else repr(e.base_path)
                raise RequestError(ErrorCode.PERMISSION_DENIED, f"Model {e.name}: base_path {shown} is not an absolute "
                                   f"path under the repository roots {list(self.allowed_roots)} (serving.admin.allowed_roots)")

    def _allowed(self, base_path: str) -> bool:
        if not base_path:
            return False
        if storage.is_remote(base_path):
            parts = str(base_path).split("://", 1)[1].split("/")
            if any(p in ("..", ".") for p in parts):
                return False
            path = str(base_path).rstrip("/")
            return any(storage.is_remote(r) and (path == r or path.startswith(r + "/")) for r in self.allowed_roots)
        if not os.path.isabs(base_path):
            return False  # relative to what? the server's working directory is no anchor a client can know
        real = os.path.realpath(base_path)
        return any(not storage.is_remote(r) and (real == r or real.startswith(r.rstrip(os.sep) + os.sep))
                   for r in self.allowed_roots)


def _normalise_root(root: Any) -> str:
    text = str(root)
    if storage.is_remote(text):
        return text.rstrip("/")
    return os.path.realpath(text)
