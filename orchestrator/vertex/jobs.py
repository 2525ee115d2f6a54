"""Submitting Vertex jobs, printing them in dry runs, and following them until they end."""
from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

import yaml

from orchestrator.artifacts import publish
from orchestrator.artifacts.redact import redact
from orchestrator.errors import TaskFailedError

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

log = logging.getLogger(__name__)

TERMINAL_OK = ("JOB_STATE_SUCCEEDED",)
TERMINAL_FAILED = ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED")


def gcloud_command(kind: str, cfg: ExperimentConfig, display_name: str, config_path: Path, labels: Dict[str, str],
                   extra: Optional[Dict[str, Any]] = None) -> str:
    """The ``gcloud ai <kind> create`` command submitting the same job from ``config_path`` (labels redacted)."""
    parts = ["gcloud", "ai", kind, "create", f"--project={cfg.vertex.project}", f"--region={cfg.vertex.region}",
             f"--display-name={display_name}"]
    parts += [f"--{k}={v}" for k, v in (extra or {}).items()]
    if labels:
        parts.append("--labels=" + ",".join(f"{k}={v}" for k, v in sorted(redact(dict(labels)).items())))
    parts.append(f"--config={config_path}")
    return " ".join(shlex.quote(p) for p in parts)


def write_gcloud_config(path: Path, body: Dict[str, Any]) -> Path:
    """The YAML file gcloud's ``--config`` reads (the job body without the fields given as flags), redacted."""
    return publish.write_text(path, yaml.safe_dump(redact(body), sort_keys=False))


def print_dry_run(kind: str, parent: str, request_json: str, command: str) -> None:
    """Print the request body and the equivalent gcloud command, between marker lines."""
    print(f"--- vertex dry run: {kind} request (parent: {parent}) ---")
    print(request_json)
    print("--- equivalent gcloud command ---")
    print(command)
    print("--- end of vertex dry run (nothing was contacted) ---")
    sys.stdout.flush()


def state_name(job: Any) -> str:
    """The job's state as its enum name, e.g. ``JOB_STATE_RUNNING``."""
    state = job.state
    return getattr(state, "name", str(state))


def transient_retry(v: Any) -> Any:
    """``google.api_core`` Retry of a poll: UNAVAILABLE and DEADLINE_EXCEEDED, backing off, for ``vertex.retry_deadline_s``.

    An API that is briefly unreachable (a network blip, a rolling restart) must not end the wait for a
    job that keeps running; every other error is not transient and is raised at once.
    """
    from google.api_core import exceptions, retry

    def tell(exc: Exception) -> None:
        print(f"tfscale: vertex API: {getattr(exc, 'grpc_status_code', None) or type(exc).__name__} "
              f"({str(exc).splitlines()[0][:120]}); retrying", flush=True)

    return retry.Retry(predicate=retry.if_exception_type(exceptions.ServiceUnavailable, exceptions.DeadlineExceeded),
                       initial=min(1.0, float(v.poll_interval_s)), maximum=float(v.max_poll_interval_s), multiplier=2.0,
                       timeout=float(v.retry_deadline_s), on_error=tell)


def follow(get: Callable[[], Any], cancel: Callable[[], Any], v: Any, *, what: str) -> Any:
    """Poll ``get()`` with exponential backoff until the job ends; return the final job.

    A failed, cancelled or expired job raises TaskFailedError carrying ``job.error.message``. Ctrl-C, or
    ``vertex.timeout_s`` running out, cancels the job before giving up, so no machines keep running
    unattended. Transient API errors are retried (:func:`transient_retry`); past ``vertex.retry_deadline_s``
    the wait ends with a TaskFailedError while the job itself keeps running.
    """
    from google.api_core import exceptions

    interval = float(v.poll_interval_s)
    started = time.monotonic()
    last = None
    poll = transient_retry(v)(get)
    try:
        while True:
            try:
                job = poll()
            except exceptions.RetryError as exc:
                raise TaskFailedError(f"The Vertex API stayed unreachable for vertex.retry_deadline_s={v.retry_deadline_s}s "
                                      f"while following the {what} ({exc.cause or exc}); the job was not cancelled: "
                                      "follow it in the console or with gcloud ai custom-jobs describe.") from None
            state = state_name(job)
            if state != last:
                print(f"tfscale: vertex {what} {job.name}: {state}", flush=True)
                last = state
            if state in TERMINAL_OK:
                return job
            if state in TERMINAL_FAILED:
                message = job.error.message if job.error and job.error.message else "no error message"
                raise TaskFailedError(f"Vertex {what} {job.name} ended {state}: {message}")
            if v.timeout_s is not None and time.monotonic() - started > float(v.timeout_s):
                cancel()
                raise TaskFailedError(f"Vertex {what} {job.name} still {state} after vertex.timeout_s={v.timeout_s}; it was cancelled.")
            time.sleep(interval)
            interval = min(interval * 1.5, float(v.max_poll_interval_s))
    except KeyboardInterrupt:
        log.warning("interrupted: cancelling the vertex %s", what)
        cancel()
        raise


def message_json(message: Any) -> Dict[str, Any]:
    """A proto-plus message as its JSON dict."""
    from orchestrator.vertex.job_spec import to_json

    return json.loads(to_json(message))
