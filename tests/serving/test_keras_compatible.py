"""TF Serving client code written for a model Keras exported works unchanged on tfscale's versions, and the
classification / regression signatures answer TF Serving's Classify and Regress, over REST and gRPC.

The versions are exported untrained (tfscale's ``export_version`` on ``build_model``): what is checked is the
shape of the signatures and answers, not what the model learned.
"""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import requests

from serving_testkit import publish, serving_settings

KERAS, TFSCALE, REGRESSOR = "keras_digits", "digits_mlp", "diabetes_mlp_regressor"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A Keras-exported classifier, tfscale's classifier (with the classification signature) and regressor."""
    from orchestrator.artifacts.export import export_version
    from orchestrator.config.compose import compose
    from orchestrator.runtime.tf_env import import_keras, import_tensorflow
    from orchestrator.training.models import build_model

    tf, keras = import_tensorflow(), import_keras()
    root = tmp_path_factory.mktemp("compatible")
    base = root / "models"
    inputs = keras.Input((64,), name="features")
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Rescaling(1 / 16)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="probabilities")(hidden))
    tf.saved_model.save(model, str(root / "keras"))  # Keras' own signature, as a user exports it
    publish(base / KERAS, 1, root / "keras")

    cfg = compose([f"export.model_base={base}", "export.signatures=[serving_default,classification]"])
    export_version(tf, build_model(cfg, (64,), 10, 16.0), cfg, (64,), {})
    cfg = compose([f"export.model_base={base}", "experiment=diabetes_regression"])
    export_version(tf, build_model(cfg, (10,), 1, 0.05, target=(150.0, 75.0)), cfg, (10,), {})
    return base


@pytest.fixture(scope="module")
def server(repo):
    from orchestrator.serving.server import EmbeddedServer

    running = EmbeddedServer(serving_settings(repo)).start()
    yield running
    running.stop()


# ------------------------------------------------------------------ client code written for Keras' export
def rest_scores(url: str, model: str, rows: np.ndarray) -> np.ndarray:
    """A REST client of a Keras classifier: ``predictions`` is a batch x classes array."""
    r = requests.post(f"{url}/v1/models/{model}:predict", json={"instances": rows.tolist()}, timeout=30)
    r.raise_for_status()
    return np.asarray(r.json()["predictions"], dtype=np.float32)


def grpc_scores(port: int, model: str, rows: np.ndarray, output: str) -> np.ndarray:
    """A gRPC client of a Keras classifier: ``outputs[<the output layer's name>]``."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return tf.make_ndarray(response.outputs[output])


def test_a_keras_client_reads_tfscale_versions_unchanged(server, digits_rows):
    url = f"http://127.0.0.1:{server.rest_port}"
    # What the Keras-exported version answers teaches the client its shape and output name.
    meta = requests.get(f"{url}/v1/models/{KERAS}/metadata").json()["metadata"]["signature_def"]["signature_def"]
    (output,) = meta["serving_default"]["outputs"]
    keras_rest = rest_scores(url, KERAS, digits_rows)
    assert keras_rest.shape == (8, 10)

    for model in (KERAS, TFSCALE):
        scores = rest_scores(url, model, digits_rows)
        assert scores.shape == keras_rest.shape
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(grpc_scores(server.grpc_port, model, digits_rows, output), scores, rtol=1e-5, atol=1e-6)
    ours = requests.get(f"{url}/v1/models/{TFSCALE}/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert set(ours["serving_default"]["outputs"]) == set(meta["serving_default"]["outputs"]) == {"probabilities"}
    assert ours["classification"]["method_name"] == "tensorflow/serving/classify"


# ------------------------------------------------------------------------------------------ classify
def test_classify_over_rest_and_grpc(server, digits_rows):
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{TFSCALE}"
    expected = rest_scores(f"http://127.0.0.1:{server.rest_port}", TFSCALE, digits_rows[:3])
    body = {"signature_name": "classification", "examples": [{"features": row.tolist()} for row in digits_rows[:3]]}
    r = requests.post(f"{url}:classify", json=body, timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [[label for label, _ in row] for row in results] == [[str(i) for i in range(10)]] * 3
    np.testing.assert_allclose([[score for _, score in row] for row in results], expected, rtol=1e-5, atol=1e-6)

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = TFSCALE
    request.model_spec.signature_name = "classification"
    for row in digits_rows[:3]:
        request.input.example_list.examples.add().features.feature["features"].float_list.value.extend(row.tolist())
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, timeout=30)
    got = [[c.score for c in item.classes] for item in response.result.classifications]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert response.model_spec.signature_name == "classification" and response.model_spec.version.value == 1


def test_classify_mistakes_answer_400_with_the_fix(server, digits_rows):
    url = f"http://127.0.0.1:{server.rest_port}/v1/models"
    row = {"features": digits_rows[0].tolist()}
    r = requests.post(f"{url}/{TFSCALE}:classify", json={"examples": [row]}, timeout=30)
    assert r.status_code == 400 and '"signature_name": "classification"' in r.json()["error"]
    r = requests.post(f"{url}/{TFSCALE}:regress", json={"examples": [row]}, timeout=30)
    assert r.status_code == 400 and "export.signatures=[serving_default,regression]" in r.json()["error"]
    whole = {"signature_name": "classification", "examples": [{"features": [int(v) for v in digits_rows[0]]}]}
    r = requests.post(f"{url}/{TFSCALE}:classify", json=whole, timeout=30)
    assert r.status_code == 400 and "1.0, not 1" in r.json()["error"]
    short = {"signature_name": "classification", "examples": [{"features": [1.0, 2.0]}]}
    r = requests.post(f"{url}/{TFSCALE}:classify", json=short, timeout=30)
    assert r.status_code == 400 and "[64]" in r.json()["error"]
    assert requests.post(f"{url}/{TFSCALE}:classify", json={"examples": []}, timeout=30).status_code == 400
    assert requests.post(f"{url}/{TFSCALE}:predict", json={"instances": [row["features"]]}, timeout=30).status_code == 200


# ------------------------------------------------------------------------------------------- regress
def test_regress_over_rest_and_grpc_matches_predict(server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc, regression_pb2

    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{REGRESSOR}"
    rows = np.random.default_rng(0).normal(0.0, 0.05, size=(4, 10)).astype(np.float32)
    r = requests.post(f"{url}:predict", json={"instances": rows.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    predicted = np.asarray(r.json()["predictions"], dtype=np.float32)
    assert predicted.shape == (4, 1)
    # The context holds nothing the examples need here; it is merged into each, as TF Serving does.
    body = {"signature_name": "regression", "context": {"unused": 1}, "examples": [{"features": row.tolist()} for row in rows]}
    r = requests.post(f"{url}:regress", json=body, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["results"], predicted[:, 0], rtol=1e-5)

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = REGRESSOR
    request.model_spec.signature_name = "regression"
    for row in rows:
        request.input.example_list.examples.add().features.feature["features"].float_list.value.extend(row.tolist())
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Regress(request, timeout=30)
    np.testing.assert_allclose([x.value for x in response.result.regressions], predicted[:, 0], rtol=1e-5)


# -------------------------------------------------------------------------------- JSON -> tf.Example
def test_json_features_follow_tf_serving_kinds():
    from tensorflow.core.example import example_pb2

    from orchestrator.serving import examples
    from orchestrator.serving.status import RequestError

    name, serialized = examples.decode_json({"signature_name": "s", "context": {"c": "ctx"},
                                             "examples": [{"f": [1.0, 2.5], "i": 3, "b": {"b64": "AAE="}}]},
                                            "classify", allow_nonfinite=False)
    parsed = example_pb2.Example.FromString(serialized[0]).features.feature
    assert name == "s" and list(parsed["f"].float_list.value) == [1.0, 2.5]
    assert list(parsed["i"].int64_list.value) == [3] and parsed["b"].bytes_list.value == [b"\x00\x01"]
    assert parsed["c"].bytes_list.value == [b"ctx"]  # the context, merged into the example
    for bad in ({"f": [1, 2.5]}, {"f": [[1.0]]}, {"f": True}, {"f": float("nan")}):
        with pytest.raises(RequestError):
            examples.decode_json({"examples": [bad]}, "regress", allow_nonfinite=False)
    with pytest.raises(RequestError, match="'examples' is expected"):
        examples.decode_json({"instances": [1.0]}, "regress", allow_nonfinite=False)
