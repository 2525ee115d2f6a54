"""The regression preset end to end: ``tfscale experiment=diabetes_regression`` trains, quantizes (its error
drop reported), publishes, and the version answers ``:predict`` and ``:regress`` (slow: it trains)."""
from __future__ import annotations

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.slow

MODEL = "diabetes_mlp_regressor"


def test_diabetes_preset_trains_quantizes_publishes_and_serves(tfscale):
    from sklearn.datasets import load_diabetes

    from omegaconf import OmegaConf

    from orchestrator.config.serving import ServingConfig
    from orchestrator.serving.server import EmbeddedServer

    run = tfscale("experiment=diabetes_regression", "quantization=int8", "quantization.max_mae_increase=5.0",
                  "trainer.epochs=40", "trainer.verbose=0", "trainer.tensorboard=false")
    assert run.returncode == 0, run.output[-3000:]
    metrics = run.metrics
    # Predicting the training mean scores a mean absolute error of about 64 on this data.
    assert metrics["test"]["mae"] < 55, metrics["test"]
    q = metrics["quantization"]
    assert q["metric"] == "mae" and "accuracy_drop" not in q
    assert abs(q["mae_increase"]) <= 5.0 and q["quantized"]["tflite_bytes"] < q["float"]["tflite_bytes"]
    assert "error drop: MAE" in run.stdout
    versions = tfscale.cwd / "models" / MODEL
    assert sorted(p.name for p in versions.iterdir()) == ["0001", "0001.int8.tflite"]

    rows = load_diabetes().data[:5].astype(np.float32)
    settings = ServingConfig(model_base=str(tfscale.cwd / "models"), rest_port=0, grpc_port=-1, file_system_poll_wait_seconds=0)
    server = EmbeddedServer(OmegaConf.structured(settings)).start()
    try:
        url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}"
        predicted = requests.post(f"{url}:predict", json={"instances": rows.tolist()}, timeout=30).json()["predictions"]
        assert np.asarray(predicted).shape == (5, 1)
        body = {"signature_name": "regression", "examples": [{"features": row.tolist()} for row in rows]}
        r = requests.post(f"{url}:regress", json=body, timeout=30)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["results"], np.asarray(predicted)[:, 0], rtol=1e-5)
        assert 25 < min(r.json()["results"]) and max(r.json()["results"]) < 346  # in the targets' units
    finally:
        server.stop()
