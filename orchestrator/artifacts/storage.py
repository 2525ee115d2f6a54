"""Storage URIs: where every artifact goes is a local path, ``file://``, ``gs://`` or ``s3://``.

Public API (all functions take a URI or a local path, as ``str`` or :class:`~pathlib.Path`)::

    is_remote(uri) -> bool                    # gs://, s3:// (any scheme but file://)
    local_path(uri) -> Path                   # a local path or file:// URI as a Path (ValueError if remote)
    join(base, *parts) -> str                 # "gs://b/models" + "m" -> "gs://b/models/m"; local: a path string
    split(uri) -> (parent, name)              # "gs://b/models/m/0001" -> ("gs://b/models/m", "0001")
    filesystem(uri) -> (fsspec filesystem, path in its terms)
    exists(uri) -> bool;  isdir(uri) -> bool
    listdir(uri) -> [names]                   # direct children ([] when missing); "directories" are prefixes
    read_bytes(uri) / read_text(uri)
    glob(pattern) -> [URIs]                   # the files a pattern matches, sorted
    open_stream(uri) -> binary file object    # sequential reads of a large object, no read-ahead cache
    stat(uri) -> (size, modified time)
    put_bytes(uri, data, create_only=False)   # one object/file; create_only: FileExistsError if it exists
    files(uri) -> {relative path: modified time}   # every file below uri
    upload_dir(local, uri, last=())           # copy a local tree into uri, the names in ``last`` last
    download_dir(uri, local)                  # copy uri's tree into a local directory
    remove(uri)                               # a file or a whole tree; missing is fine
    check_access(uri, key)                    # preflight: ConfigError naming the URI, the problem, the fix
    preflight(cfg)                            # check_access for every remote URI an experiment writes to;
                                              # the shards it reads from a bucket listed

Artifacts are *published* with :mod:`orchestrator.artifacts.publish` (which uses this module); ``put_bytes`` and
``upload_dir`` are its primitives, not a second way to publish.

Credentials and endpoints:

- ``gs://``: gcsfs. With ``STORAGE_EMULATOR_HOST`` set (``http://127.0.0.1:4443``: fake-gcs-server or another GCS
  emulator) requests go to that endpoint, anonymously — an emulator takes no credentials, and a variable that
  only tests and local development set is the one place that says so. Otherwise Application Default Credentials
  (``GOOGLE_APPLICATION_CREDENTIALS`` = a service-account key file, ``gcloud auth application-default login``,
  or the metadata server on Google Cloud) — never a silent anonymous fallback, so a missing credential is an
  error, not a run of 401s.
- ``s3://``: s3fs (botocore): ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for MinIO, moto's server or
  another S3-compatible endpoint; credentials from botocore's usual chain (``AWS_ACCESS_KEY_ID``/
  ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, instance roles).

fsspec and gcsfs/s3fs are imported inside the functions that need them: the config path (and ``tfscale --help``)
never pays for them, and a local-only run never needs the ``storage`` extra.
"""
from __future__ import annotations

import os
import posixpath
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Tuple, Union
from urllib.parse import urlsplit

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

PathOrUri = Union[str, os.PathLike]
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
CHECK_TIMEOUT_S = 3.0  # a preflight answers in seconds: one attempt, short timeouts, no retries
_EXTRA = "pip install 'tfscale[storage]'"


# ------------------------------------------------------------------------------------------ names
def _scheme(uri: PathOrUri) -> str:
    s = os.fspath(uri)
    if "://" not in s:
        return ""
    return s.split("://", 1)[0].lower()


def is_remote(uri: PathOrUri) -> bool:
    """True for an object-store (or any non-``file``) URI: ``gs://b/x``, ``s3://b/x``."""
    return _scheme(uri) not in ("", "file")


def local_path(uri: PathOrUri) -> Path:
    """A local path or ``file://`` URI as a :class:`Path`; ValueError for a remote URI."""
    s = os.fspath(uri)
    if is_remote(s):
        raise ValueError(f"{s} is not a local path")
    if _scheme(s) == "file":
        return Path(urlsplit(s).path)
    return Path(s)


def join(base: PathOrUri, *parts: str) -> str:
    """``base`` joined with ``parts`` by ``/`` (a URI stays a URI, a local path stays a path string)."""
    s = os.fspath(base)
    if not is_remote(s):
        return str(local_path(s).joinpath(*parts))
    s = s.rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            s = f"{s}/{p}"
    return s


def split(uri: PathOrUri) -> Tuple[str, str]:
    """``(parent, name)`` of a URI or path."""
    s = os.fspath(uri)
    if not is_remote(s):
        p = local_path(s)
        return str(p.parent), p.name
    s = s.rstrip("/")
    parent, _, name = s.rpartition("/")
    return parent, name


def bucket(uri: PathOrUri) -> str:
    """The bucket of a remote URI (``gs://b/x`` -> ``b``)."""
    return urlsplit(os.fspath(uri)).netloc


# ------------------------------------------------------------------------------------------ filesystems
def emulator() -> str:
    """The GCS emulator endpoint from ``STORAGE_EMULATOR_HOST`` (with a scheme), or ''."""
    host = os.environ.get(EMULATOR_ENV, "").strip()
    if host in ("", "default"):
        return ""
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


def _import(module: str, uri: str) -> Any:
    import importlib
    import logging

    # gcsfs announces its experimental features at INFO on import: not a line for a run's output.
    logging.getLogger("gcsfs").setLevel(max(logging.getLogger("gcsfs").getEffectiveLevel(), logging.WARNING))

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError("storage", uri, f"{module} is not installed; {_EXTRA}.") from None


def filesystem(uri: PathOrUri) -> Tuple[Any, str]:
    """The fsspec filesystem holding ``uri`` and ``uri``'s path in that filesystem's terms.

    Listings are never cached: a poller must see a version the moment it appears.
    """
    s = os.fspath(uri)
    scheme = _scheme(s)
    if not is_remote(s):
        fsspec = _import("fsspec", s)
        return fsspec.filesystem("file"), str(local_path(s))
    path = s.split("://", 1)[1].rstrip("/")
    if scheme in ("gs", "gcs"):
        gcsfs_core = _import("gcsfs.core", s)
        # The plain GCSFileSystem on purpose: gcsfs' default subclass asks a gRPC control API for each bucket's
        # type, which an emulator does not serve (a minute's timeout per bucket).
        if emulator():
            return gcsfs_core.GCSFileSystem(token="anon", use_listings_cache=False), path
        return gcsfs_core.GCSFileSystem(token="google_default", use_listings_cache=False), path
    if scheme == "s3":
        s3fs = _import("s3fs", s)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        return s3fs.S3FileSystem(endpoint_url=endpoint, use_listings_cache=False), path
    fsspec = _import("fsspec", s)
    fs, p = fsspec.core.url_to_fs(s)
    return fs, p


# ------------------------------------------------------------------------------------------ reading
def exists(uri: PathOrUri) -> bool:
    """Whether a file or a non-empty "directory" is at ``uri``."""
    if not is_remote(uri):
        return local_path(uri).exists()
    fs, p = filesystem(uri)
    return bool(fs.exists(p))


def isdir(uri: PathOrUri) -> bool:
    """Whether ``uri`` is a directory (on an object store: a prefix with objects below it)."""
    if not is_remote(uri):
        return local_path(uri).is_dir()
    fs, p = filesystem(uri)
    return bool(fs.isdir(p))


def listdir(uri: PathOrUri) -> List[str]:
    """Names of the direct children of ``uri`` (sorted; [] when it does not exist)."""
    if not is_remote(uri):
        try:
            return sorted(os.listdir(local_path(uri)))
        except (FileNotFoundError, NotADirectoryError):
            return []
    fs, p = filesystem(uri)
    try:
        entries = fs.ls(p, detail=False)
    except FileNotFoundError:
        return []
    return sorted({posixpath.basename(str(e).rstrip("/")) for e in entries} - {""})


def read_bytes(uri: PathOrUri) -> bytes:
    """The content of the file at ``uri`` (FileNotFoundError when missing)."""
    if not is_remote(uri):
        return local_path(uri).read_bytes()
    fs, p = filesystem(uri)
    return fs.cat_file(p)


def read_text(uri: PathOrUri) -> str:
    """The UTF-8 text of the file at ``uri``."""
    return read_bytes(uri).decode("utf-8")


def glob(pattern: PathOrUri) -> List[str]:
    """The files ``pattern`` matches (``*``, ``?``, ``[...]``; ``**`` across directories), sorted, as URIs or paths.

    On an object store "directories" are prefixes, so only objects are returned.
    """
    s = os.fspath(pattern)
    if not is_remote(s):
        import glob as _glob

        return sorted(p for p in _glob.glob(str(local_path(s)), recursive=True) if os.path.isfile(p))
    scheme = s.split("://", 1)[0]
    fs, p = filesystem(s)
    found = fs.glob(p, detail=True)
    return sorted(f"{scheme}://{k}" for k, v in found.items() if v.get("type") != "directory")


def open_stream(uri: PathOrUri) -> Any:
    """A binary file object reading ``uri`` from its start, sequentially: each ``read(n)`` asks the store for
    those ``n`` bytes (no read-ahead cache), so memory holds what the caller asked for, not the file."""
    fs, p = filesystem(uri)
    if not is_remote(uri):
        return fs.open(p, "rb")
    return fs.open(p, "rb", cache_type="none")


def stat(uri: PathOrUri) -> Tuple[int, float]:
    """``(size in bytes, modification time)`` of the file at ``uri`` (FileNotFoundError when missing)."""
    if not is_remote(uri):
        st = local_path(uri).stat()
        return st.st_size, st.st_mtime
    fs, p = filesystem(uri)
    info = fs.info(p)
    return int(info.get("size") or 0), _mtime(info)


def files(uri: PathOrUri) -> Dict[str, float]:
    """Every file below ``uri``: ``{path relative to uri: modification time (epoch seconds)}``."""
    if not is_remote(uri):
        root = local_path(uri)
        found = {}
        for dirpath, _, names in os.walk(root):
            for n in names:
                f = Path(dirpath) / n
                found[str(f.relative_to(root))] = f.stat().st_mtime
        return found
    fs, p = filesystem(uri)
    try:
        listing = fs.find(p, detail=True)
    except FileNotFoundError:
        return {}
    prefix = p.rstrip("/") + "/"
    return {k[len(prefix):]: _mtime(v) for k, v in listing.items() if k.startswith(prefix) and v.get("type") != "directory"}


def _mtime(info: Dict[str, Any]) -> float:
    for key in ("mtime", "updated", "LastModified", "last_modified"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, (int, float)):
            return float(value)
        try:
            from datetime import datetime

            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return 0.0


# ------------------------------------------------------------------------------------------ writing
def put_bytes(uri: PathOrUri, data: bytes, *, create_only: bool = False) -> None:
    """Write one object (an object appears whole or not at all); ``create_only``: FileExistsError if it exists.

    On GCS ``create_only`` is the ``ifGenerationMatch=0`` precondition, on S3 ``If-None-Match: *``: two
    writers racing for the same name cannot both succeed. Local paths: ``O_EXCL``, else a plain write (local
    artifacts are published through :mod:`orchestrator.artifacts.publish`, which renames into place).
    """
    if not is_remote(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb" if create_only else "wb") as f:
            f.write(data)
        return
    fs, p = filesystem(uri)
    fs.pipe_file(p, data, mode="create" if create_only else "overwrite")


def upload_dir(local: PathOrUri, uri: PathOrUri, *, last: Iterable[str] = ()) -> List[str]:
    """Copy every file of the local directory ``local`` to ``uri/<relative path>``; return the URIs written.

    Files whose name is in ``last`` are uploaded after all the others, in that order: a reader that waits for
    them (a model server waits for ``saved_model.pb``) never finds the rest incomplete.
    """
    local = Path(local)
    last = list(last)
    fs, base = filesystem(uri)
    ordered = sorted((str(p.relative_to(local)) for p in local.rglob("*") if p.is_file() and not p.is_symlink()),
                     key=lambda rel: (posixpath.basename(rel) in last,
                                      last.index(posixpath.basename(rel)) if posixpath.basename(rel) in last else 0, rel))
    written = []
    for rel in ordered:
        rel_posix = Path(rel).as_posix()
        if is_remote(uri):
            fs.put_file(str(local / rel), f"{base}/{rel_posix}")
        else:
            dst = Path(base) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local / rel, dst)
        written.append(join(uri, rel_posix))
    return written


def download_dir(uri: PathOrUri, local: PathOrUri) -> Path:
    """Copy every file below ``uri`` into the local directory ``local`` (created); return ``local``."""
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    if not is_remote(uri):
        shutil.copytree(local_path(uri), local, dirs_exist_ok=True)
        return local
    fs, base = filesystem(uri)
    for rel in sorted(files(uri)):
        dst = local / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{base}/{rel}", str(dst))
    return local


def remove(uri: PathOrUri) -> None:
    """Remove the file or the whole tree at ``uri`` (nothing there is fine)."""
    if not is_remote(uri):
        p = local_path(uri)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        return
    fs, p = filesystem(uri)
    try:
        fs.rm(p, recursive=True)
    except FileNotFoundError:
        pass


# ------------------------------------------------------------------------------------------ preflight
def check_access(uri: PathOrUri, key: str, *, reading: bool = False) -> None:
    """Fail fast, before any compute or write, if ``uri`` cannot be written to (``reading``: read from).

    One attempt with short timeouts: a missing bucket, an unreachable endpoint or missing credentials raise
    :class:`ConfigError` naming the key, the URI, the problem and the fix. Local paths are not checked here.
    A reader may be allowed to read objects but not the bucket's metadata (GCS ``roles/storage.objectViewer``),
    so with ``reading`` a denied bucket lookup is not an error: listing the objects tells.
    """
    s = os.fspath(uri)
    if not is_remote(s):
        return
    scheme = _scheme(s)
    if not bucket(s):
        raise ConfigError(key, s, f"A {scheme}:// URI needs a bucket, e.g. {scheme}://my-bucket/runs.")
    if scheme in ("gs", "gcs"):
        _check_gcs(s, key, reading)
    elif scheme == "s3":
        _check_s3(s, key, reading)
    else:
        filesystem(s)  # at least an installed fsspec implementation


def _check_gcs(uri: str, key: str, reading: bool = False) -> None:
    _import("gcsfs", uri)
    from google.api_core import exceptions as gexc
    from google.cloud import storage as gcs

    endpoint = emulator()
    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        client = gcs.Client(credentials=AnonymousCredentials(), project="tfscale",
                            client_options={"api_endpoint": endpoint})
        where = f"the GCS emulator at {endpoint} ({EMULATOR_ENV})"
    else:
        import google.auth
        from google.auth import exceptions as auth_exc

        try:
            credentials, project = google.auth.default()
        except auth_exc.DefaultCredentialsError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(key, uri, f"No Google Cloud credentials ({first}). Set GOOGLE_APPLICATION_CREDENTIALS to a "
                              "service-account key file or run `gcloud auth application-default login`; for an "
                              f"emulator set {EMULATOR_ENV}=http://HOST:PORT.") from None
        client = gcs.Client(credentials=credentials, project=project or "tfscale")
        where = "Google Cloud Storage"
    name = bucket(uri)
    try:
        client.get_bucket(name, timeout=CHECK_TIMEOUT_S, retry=None)
    except gexc.NotFound:
        raise ConfigError(key, uri, f"Bucket {name} does not exist on {where}; create it "
                          f"(gcloud storage buckets create gs://{name}) or fix the URI.") from None
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        if reading and isinstance(exc, gexc.Forbidden):
            return
        raise ConfigError(key, uri, f"Access to bucket {name} denied ({exc.code}); grant the credentials "
                          "roles/storage.objectAdmin on it or use other credentials.") from None
    except gexc.GoogleAPICallError as exc:
        raise ConfigError(key, uri, f"{where} answered {exc.code} for bucket {name}; check the endpoint.") from None
    except Exception as exc:  # requests' ConnectionError/Timeout, google.auth's RefreshError, ...
        raise ConfigError(key, uri, f"Cannot reach {where}: {_connection_problem(exc)}. "
                          + (f"Start the emulator or fix {EMULATOR_ENV}." if endpoint else
                             "Check the network, or the credentials if they could not be refreshed.")) from None


def _check_s3(uri: str, key: str, reading: bool = False) -> None:
    _import("s3fs", uri)
    import botocore.session
    from botocore import exceptions as bexc
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    where = endpoint or "Amazon S3"
    config = Config(connect_timeout=CHECK_TIMEOUT_S, read_timeout=CHECK_TIMEOUT_S, retries={"max_attempts": 1})
    name = bucket(uri)
    try:
        client = botocore.session.get_session().create_client("s3", endpoint_url=endpoint, config=config)
        client.head_bucket(Bucket=name)
    except bexc.NoCredentialsError:
        raise ConfigError(key, uri, "No AWS credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE.") from None
    except bexc.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise ConfigError(key, uri, f"Bucket {name} does not exist on {where}; create it (aws s3 mb s3://{name}) "
                              "or fix the URI.") from None
        if code in ("403", "AccessDenied", "Forbidden"):
            if reading:
                return
            raise ConfigError(key, uri, f"Access to bucket {name} denied; use credentials allowed to write to it.") from None
        raise ConfigError(key, uri, f"{where} answered {code} for bucket {name}.") from None
    except (bexc.EndpointConnectionError, bexc.ConnectTimeoutError, bexc.ReadTimeoutError) as exc:
        raise ConfigError(key, uri, f"Cannot reach {where}: {_connection_problem(exc)}. Check AWS_ENDPOINT_URL and the network.") from None


def _connection_problem(exc: BaseException) -> str:
    """A few words for why a connection failed (the libraries' messages run to several hundred characters)."""
    text = str(exc)
    for needle, words in (("refused", "connection refused"), ("timed out", f"no answer within {CHECK_TIMEOUT_S:g}s"),
                          ("Timeout", f"no answer within {CHECK_TIMEOUT_S:g}s"), ("resolve", "the host name does not resolve"),
                          ("Name or service not known", "the host name does not resolve")):
        if needle in text:
            return words
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def experiment_uris(cfg: ExperimentConfig) -> Dict[str, str]:
    """``{config key: URI}`` of every remote location an experiment writes to."""
    uris = {"runs_dir": str(cfg.runs_dir)}
    if cfg.export.enabled:
        uris["export.model_base"] = str(cfg.export.model_base)
    target = cfg.deploy.target
    if getattr(target, "value", target) == "tfjs" and cfg.deploy.tfjs.output_base:
        uris["deploy.tfjs.output_base"] = str(cfg.deploy.tfjs.output_base)
    return {k: v for k, v in uris.items() if is_remote(v)}


def preflight(cfg: ExperimentConfig) -> None:
    """Check every remote URI of ``cfg`` (:func:`check_access`), once per bucket, before anything runs; list the
    shards a streaming source reads from a bucket (:func:`orchestrator.config.streams.check_remote`)."""
    checked = set()
    for key, uri in experiment_uris(cfg).items():
        where = (_scheme(uri), bucket(uri))
        if where in checked:
            continue
        check_access(uri, key)
        checked.add(where)
    from orchestrator.config.streams import check_remote

    check_remote(cfg, glob=glob, read_text=read_text, check_access=check_access)  # shards read from a bucket
