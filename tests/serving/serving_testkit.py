"""Helpers of the serving tests: a tiny digits-shaped SavedModel published like tfscale's export does."""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "digits_mlp"
PYTHON = sys.executable


def build_saved_model(path: Path, seed: int) -> None:
    """A Dense 64 -> 10 classifier whose serving_default has two outputs (probabilities, and the classes
    tfscale adds with export.outputs=[classes])."""
    from orchestrator.runtime.tf_env import import_keras, import_tensorflow

    tf = import_tensorflow()
    keras = import_keras()
    tf.random.set_seed(seed)
    inputs = keras.Input((64,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="features")])
    def serve(features):
        probs = model(features, training=False)
        return {"probabilities": probs, "classes": tf.argmax(probs, axis=-1)}

    tf.saved_model.save(model, str(path), signatures={"serving_default": serve.get_concrete_function()})


def publish(model_dir: Path, version: int, template: Path) -> Path:
    """Publish ``template`` as ``model_dir/<NNNN>`` by copying to a hidden sibling and renaming it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    shutil.copytree(template, tmp)
    target = model_dir / f"{version:04d}"
    os.rename(tmp, target)
    return target


def reference_predictions(path: Path, rows: np.ndarray):
    """In-process predictions of a SavedModel's serving_default signature."""
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = fn(features=tf.constant(rows))
    return {k: v.numpy() for k, v in out.items()}


def serving_settings(base: Path, **overrides):
    """A ServingConfig on free ports, fast polling."""
    from omegaconf import OmegaConf

    from orchestrator.config.serving import ServingConfig

    cfg = OmegaConf.structured(ServingConfig(model_base=str(base), rest_port=0, grpc_port=0,
                                             file_system_poll_wait_seconds=0.2))
    return OmegaConf.merge(cfg, OmegaConf.create(overrides))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pki(directory: Path, client_name: str = "deployer") -> dict:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by the CA.

    Returns PEM file paths: ``ca``, ``server_cert``, ``server_key``, ``client_cert``, ``client_key``.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("tfscale test CA")).issuer_name(name("tfscale test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(kind, cn, sans, usage):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        paths[f"{kind}_cert"] = directory / f"{kind}.pem"
        paths[f"{kind}_key"] = directory / f"{kind}.key"
        paths[f"{kind}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, paths[f"{kind}_key"])

    leaf("server", "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
         ExtendedKeyUsageOID.SERVER_AUTH)
    leaf("client", client_name, [x509.DNSName(client_name)], ExtendedKeyUsageOID.CLIENT_AUTH)
    return paths
