"""Every deploy target runs the shipped conformance suite (:mod:`orchestrator.deploy.testing`).

deploy=vertex talks to the local fake of the Vertex API (tests/vertex/vertex_fake_server.py) through the real
client library. deploy=tfjs needs the external ``tensorflowjs_converter`` (it pins its own TensorFlow): its
``check`` tests use an executable stand-in, its ``deploy`` test is skipped where no converter is installed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from orchestrator.deploy.testing import BasicDeployTargetTestCase, Invalid

TFJS_CONVERTER = (os.environ.get("TFJS_CONVERTER") or shutil.which("tensorflowjs_converter")
                  or shutil.which(os.path.expanduser("~/.venvs/tfjs/bin/tensorflowjs_converter")))


class TestNone(BasicDeployTargetTestCase):
    name = "none"

    def valid_overrides(self, workdir):
        return ["deploy=none"]

    def check_result(self, result, version_dir, workdir):
        assert result == {}


class TestTfServing(BasicDeployTargetTestCase):
    name = "tf_serving"
    result_keys = ("target", "model", "version", "files", "launch_plan", "smoke_test")

    def valid_overrides(self, workdir):
        return ["deploy=tf_serving", "deploy.tf_serving.launch=embedded", "deploy.tf_serving.smoke_timeout_s=90"]

    def invalid_overrides(self, workdir):
        good = self.valid_overrides(workdir)
        return [Invalid([*good, "deploy.tf_serving.replicas=0"], "deploy.tf_serving.replicas", 0),
                Invalid([*good, "deploy.tf_serving.smoke_rows=0"], "deploy.tf_serving.smoke_rows", 0),
                Invalid([*good, "deploy.tf_serving.monitoring.path=metrics"], "deploy.tf_serving.monitoring.path", "metrics"),
                Invalid([*good, "export=none"], "export.enabled", False)]

    def check_result(self, result, version_dir, workdir):
        assert result["version"] == int(version_dir.name) and result["model"] == version_dir.parent.name
        smoke = result["smoke_test"]
        assert smoke["passed"] and smoke["served_version"] == 1 and smoke["running"] is False
        assert Path(result["files"]["models_config"]).is_file()


class TestTfjs(BasicDeployTargetTestCase):
    name = "tfjs"
    result_keys = ("target", "path", "files", "bytes", "command")

    def converter(self, workdir: Path) -> str:
        if TFJS_CONVERTER:
            return TFJS_CONVERTER
        # check() only needs an executable converter; deploy is skipped without the real one.
        stand_in = workdir / "bin" / "tensorflowjs_converter"
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
        return str(stand_in)

    def valid_overrides(self, workdir):
        return ["deploy=tfjs", f"deploy.tfjs.converter={self.converter(workdir)}",
                f"deploy.tfjs.output_base={workdir / 'web_models'}"]

    def invalid_overrides(self, workdir):
        good = self.valid_overrides(workdir)
        return [Invalid([*good, "deploy.tfjs.quantize=int4"], "deploy.tfjs.quantize", "int4"),
                Invalid([*good, "deploy.tfjs.weight_shard_size_bytes=0"], "deploy.tfjs.weight_shard_size_bytes", 0),
                Invalid([*good, "deploy.tfjs.converter=/nonexistent/tensorflowjs_converter"], "deploy.tfjs.converter",
                        "/nonexistent/tensorflowjs_converter")]

    def missing_requirement(self):
        return None if TFJS_CONVERTER else "no tensorflowjs_converter (set TFJS_CONVERTER or put it on PATH)"

    def check_result(self, result, version_dir, workdir):
        published = Path(result["path"])
        assert published.name == version_dir.name and (published / "model.json").is_file()


class TestVertex(BasicDeployTargetTestCase):
    name = "vertex"
    result_keys = ("model", "version_id", "endpoint", "traffic_split")

    @pytest.fixture(autouse=True)
    def fake_vertex(self):
        from vertex.vertex_fake_server import FakeVertex

        self.fake = FakeVertex().start()
        yield self.fake
        self.fake.stop()

    def valid_overrides(self, workdir):
        return ["deploy=vertex", "vertex.project=tfscale-test", "vertex.region=us-central1",
                "vertex.bucket=tfscale-test-bucket", f"vertex.api_endpoint={self.fake.address}", "vertex.insecure=true",
                f"deploy.vertex.artifact_dir={workdir / 'artifacts'}"]

    def invalid_overrides(self, workdir):
        good = self.valid_overrides(workdir)
        return [Invalid([*good, "deploy.vertex.canary_percent=150"], "deploy.vertex.canary_percent", 150),
                Invalid([*good, "deploy.vertex.min_replicas=0"], "deploy.vertex.min_replicas", 0),
                Invalid([*good, "deploy.vertex.serving_image=''"], "deploy.vertex.serving_image", "")]

    def check_result(self, result, version_dir, workdir):
        assert result["version_id"] == "1" and result["traffic_split"] == {result["deployed_model_id"]: 100}
        (upload,) = self.fake.received("UploadModel")
        assert upload.model.artifact_uri.endswith(f"/{version_dir.parent.name}/{version_dir.name}")
        copied = workdir / "artifacts" / version_dir.parent.name / version_dir.name / "saved_model.pb"
        assert copied.read_bytes() == (version_dir / "saved_model.pb").read_bytes()


def test_every_registered_deploy_target_runs_the_suite():
    from orchestrator.config.registry import DEPLOY_TARGETS

    suites = {cls.name for cls in globals().values()
              if isinstance(cls, type) and issubclass(cls, BasicDeployTargetTestCase) and cls.name}
    assert suites == set(DEPLOY_TARGETS)
