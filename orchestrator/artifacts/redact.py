"""The one redaction rule for everything tfscale writes or prints.

Credentials belong in the environment (Application Default Credentials, ``GOOGLE_APPLICATION_CREDENTIALS``,
a secret manager), never in a config or on a command line. When one is given there anyway, no run record,
Hydra copy, model version, Vertex request or printed line keeps it: its value becomes ``<redacted>``.

The rule, applied to keys (a mapping key, the key of a ``key=value`` word, a ``name``/``value`` pair's name):

* A key is split into words at ``.``, ``_``, ``-``, other punctuation and camelCase humps
  (``vertex.labels.apiToken`` → ``vertex``, ``labels``, ``api``, ``token``).
* It is secret if one of its words is ``token``, ``secret(s)``, ``passw…`` (password, passwd),
  ``passphrase``, ``credential(s)``, ``auth``, ``authorization``, ``bearer``, ``apikey``, ``accesskey``,
  ``privatekey``, ``secretkey``; or if two adjacent words are ``api key``, ``access key``,
  ``private key`` or ``signing key``; or if one dotted part is just ``key`` (in free text a bare
  ``key=value`` is read as a placeholder; ``+key=...`` and ``a.key=...`` are still secret).
* So ``api_key``, ``AWS_SECRET_ACCESS_KEY``, ``private_key``, ``db.password``, ``auth_token`` and ``key``
  are secret, while config fields that *name* data keys or files — ``features_key``, ``label_key``,
  ``config_key``, ``grpc_tls_key`` (a path) — and words merely containing the letters (``author``,
  ``tokenizer``, ``max_tokens``) are not.
* Under a secret key every value is redacted except ``None`` and booleans (which say only whether
  something is set); a nested mapping keeps its shape with its leaves redacted.

And to values, whatever their key: a PEM private key block (``-----BEGIN ... PRIVATE KEY-----``) and a
bearer token (``Bearer <token>``) are redacted wherever they appear in a string.

Nothing here imports TensorFlow, Hydra or OmegaConf.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, List

REDACTED = "<redacted>"

_SECRET_WORDS = frozenset({"token", "secret", "secrets", "passphrase", "credential", "credentials", "auth",
                           "authorization", "bearer", "apikey", "accesskey", "privatekey", "secretkey"})
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("signing", "key")})
_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.DOTALL)
_BEARER = re.compile(r"\b(bearer)(\s+)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
_WORD = re.compile(r"""(?:[^\s,'"]|'[^']*'|"[^"]*")+""")


def _words(part: str) -> List[str]:
    return [w for w in re.split(r"[^a-z0-9]+", _HUMP.sub("_", part).lower()) if w]


def is_secret_key(key: Any) -> bool:
    """Whether a key (``api_key``, ``vertex.labels.api_token``, ``--password``) names a secret (module rule)."""
    text = str(key).strip().lstrip("+~-").strip("'\"")
    for part in text.split("."):
        words = _words(part)
        if words == ["key"]:
            return True
        if any(w in _SECRET_WORDS or w.startswith("passw") for w in words):
            return True
        if any(pair in _SECRET_PAIRS for pair in zip(words, words[1:])):
            return True
    return False


def _redact_word(word: str) -> str:
    parts = word.split("=")
    for i in range(len(parts) - 1):
        if parts[i].lstrip("[({'\"").lower() == "key":  # in prose ``key=value`` is a placeholder; a real override has a path
            continue
        if is_secret_key(parts[i]):
            return "=".join(parts[: i + 1]) + "=" + REDACTED
    return word


def redact_text(text: str) -> str:
    """``text`` with private-key blocks, bearer tokens and the values of secret ``key=value`` words redacted.

    Works on command lines, override lists joined with commas (Hydra's ``override_dirname``), URLs with a
    ``?token=`` query and error messages.
    """
    if not text:
        return text
    text = _PEM.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    if "=" not in text:
        return text
    return _WORD.sub(lambda m: _redact_word(m.group(0)), text)


def redact_args(args: Iterable[Any]) -> List[Any]:
    """Command-line words (or Hydra overrides) with the value of every secret ``key=value`` redacted."""
    return [redact_text(a) if isinstance(a, str) else a for a in (args or [])]


def _all_leaves(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _all_leaves(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_all_leaves(v) for v in obj]
    if obj is None or isinstance(obj, bool) or obj == "":
        return obj
    return REDACTED


def redact(obj: Any) -> Any:
    """A copy of plain data (dicts, lists, strings, numbers) with every secret redacted (module rule).

    Mappings shaped ``{"name": KEY, "value": V}`` (environment variable lists) are judged by ``KEY``.
    """
    if isinstance(obj, dict):
        named = obj.get("name", obj.get("key"))
        pair = isinstance(named, str) and "value" in obj and is_secret_key(named)
        out = {}
        for k, v in obj.items():
            if (pair and k == "value") or is_secret_key(k):
                out[k] = _all_leaves(v)
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def redact_message(exc: BaseException) -> str:
    """The message of ``exc`` as safe to print: a ConfigError about a secret key does not echo its value."""
    text = str(exc)
    key, value = getattr(exc, "key", None), getattr(exc, "value", None)
    if isinstance(key, str) and value not in (None, "") and is_secret_key(key):
        text = text.replace(repr(value), repr(REDACTED)).replace(str(value), REDACTED)
    return redact_text(text)
