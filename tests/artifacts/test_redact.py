"""The one redaction rule: secret keys, private keys and bearer tokens; data-key config fields untouched."""
from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator.artifacts.redact import REDACTED, is_secret_key, redact, redact_args, redact_message, redact_text
from orchestrator.errors import ConfigError

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAsekret\n-----END RSA PRIVATE KEY-----\n"


@pytest.mark.parametrize("key", ["api_key", "apiKey", "API_KEY", "access_key", "private_key", "AWS_SECRET_ACCESS_KEY",
                                 "db.password", "passwd", "auth_token", "token", "key", "vertex.labels.api_token",
                                 "--password", "+credentials", "client_secret", "Authorization"])
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["features_key", "label_key", "config_key", "grpc_tls_key", "full_key", "exclude_keys",
                                 "author", "tokenizer", "max_tokens", "kms_key_name", "vertex.project", "keys"])
def test_config_fields_naming_data_keys_are_not_secret(key):
    assert not is_secret_key(key)


def test_overrides_and_command_lines():
    assert redact_args(["tfscale", "vertex.project=p", "+token=abc", "db.password=hunter2"]) == [
        "tfscale", "vertex.project=p", "+token=<redacted>", "db.password=<redacted>"]
    # Hydra's override_dirname joins overrides with commas; gcloud nests key=value in --labels.
    assert redact_text("+vertex.labels.api_token=SEKRET123,trainer.epochs=1") == "+vertex.labels.api_token=<redacted>,trainer.epochs=1"
    assert redact_text("gcloud --labels=api_token=s3kr3t,team=ml --config=x.yaml") == \
        "gcloud --labels=api_token=<redacted>,team=ml --config=x.yaml"
    assert redact_text("gs://b/data.csv?token=abc123") == "gs://b/data.csv?token=<redacted>"
    assert redact_text("label_key=y features_key=x") == "label_key=y features_key=x"
    assert redact_text("usage: tfscale [key=value ...]") == "usage: tfscale [key=value ...]"
    assert redact_args(["+key=abc", "auth.key=abc"]) == ["+key=<redacted>", "auth.key=<redacted>"]


def test_values_that_look_like_secrets_are_redacted_under_any_key():
    assert redact_text(f"note: {PEM}done") == f"note: {REDACTED}\ndone"
    assert redact_text("header Authorization: Bearer eyJhbGciOi.J9.abc") == "header Authorization: Bearer <redacted>"
    assert redact({"comment": PEM}) == {"comment": REDACTED + "\n"}


def test_structures_keep_their_shape():
    cfg = {"data": {"label_key": "y", "features_key": "x"}, "vertex": {"labels": {"api_token": "SEKRET123", "team": "ml"}},
           "auth": {"enabled": True, "user": "me", "retries": 3, "hint": None},
           "env": [{"name": "API_TOKEN", "value": "abc"}, {"name": "MODE", "value": "fast"}],
           "args": ["trainer.epochs=1", "+db.password=hunter2"]}
    assert redact(cfg) == {
        "data": {"label_key": "y", "features_key": "x"}, "vertex": {"labels": {"api_token": REDACTED, "team": "ml"}},
        "auth": {"enabled": True, "user": REDACTED, "retries": REDACTED, "hint": None},
        "env": [{"name": "API_TOKEN", "value": REDACTED}, {"name": "MODE", "value": "fast"}],
        "args": ["trainer.epochs=1", "+db.password=<redacted>"]}
    assert cfg["vertex"]["labels"]["api_token"] == "SEKRET123"  # a copy: the input is untouched


def test_config_errors_about_a_secret_key_do_not_echo_its_value():
    exc = ConfigError("vertex.labels.api_token", "SEKRET123", "Use lowercase letters.")
    assert "SEKRET123" not in redact_message(exc)
    assert "vertex.labels.api_token" in redact_message(exc)


def test_importing_the_rule_imports_no_tensorflow():
    code = "import sys, orchestrator.artifacts.redact; print('tensorflow' in sys.modules, 'omegaconf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["False", "False"]
