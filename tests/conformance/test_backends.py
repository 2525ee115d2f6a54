"""Every backend runs the shipped conformance suite (:mod:`orchestrator.launch.testing`).

backend=vertex cannot reach Google Cloud from here: it runs against the local fake of the Vertex API
(tests/vertex/vertex_fake_server.py) through the real client library, so its ``run`` returns the job's
record (``vertex``) instead of metrics the remote chief computed.
"""
from __future__ import annotations

import importlib.util

import pytest

from orchestrator.launch.testing import BasicBackendTestCase, Invalid

MWMS = ["strategy=multi_worker_mirrored", "cluster=workers_2"]


class TestLocal(BasicBackendTestCase):
    name = "local"

    def valid_overrides(self, workdir):
        return ["backend=local"]


class TestProcesses(BasicBackendTestCase):
    name = "processes"

    def valid_overrides(self, workdir):
        return ["backend=processes", *MWMS]

    def invalid_overrides(self, workdir):
        return [Invalid(["backend=processes"], "cluster", "none"),
                Invalid(["backend=processes", *MWMS, "cluster.worker.hosts=[10.0.0.2:2222,10.0.0.3:2222]"],
                        "cluster.worker.hosts", "10.0.0.2:2222"),
                Invalid(["backend=processes", *MWMS, "backend.stop_timeout_s=-1"], "backend.stop_timeout_s", -1.0),
                Invalid(["backend=processes", *MWMS, "cluster.chief.count=2"], "cluster.chief.count", 2)]

    def check_metrics(self, metrics, run_dir):
        assert metrics["backend"] == "processes" and metrics["replicas"] == 2
        assert sorted(metrics["tasks"]) == ["worker:0", "worker:1"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'tfscale[ray]')")
class TestRay(BasicBackendTestCase):
    name = "ray"

    def valid_overrides(self, workdir):
        # One task keeps the run within the time of the other backends; the suite asserts the contract,
        # tests/clusters/test_cluster_ray.py the multi-worker behaviour.
        return ["backend=ray", *MWMS, "cluster.worker.count=1"]

    def invalid_overrides(self, workdir):
        return [Invalid(["backend=ray"], "cluster", "none"),
                Invalid(["backend=ray", *MWMS, "backend.ray_address=http://head"], "backend.ray_address", "http://head"),
                Invalid(["backend=ray", *MWMS, "backend.ray_num_cpus=0"], "backend.ray_num_cpus", 0)]

    def check_metrics(self, metrics, run_dir):
        assert metrics["backend"] == "ray" and metrics["tasks"] == {"worker:0": str(run_dir / "tasks" / "worker-0.log")}


class TestVertex(BasicBackendTestCase):
    name = "vertex"
    metric_keys = ("vertex",)

    @pytest.fixture(autouse=True)
    def fake_vertex(self):
        from vertex.vertex_fake_server import FakeVertex

        self.fake = FakeVertex().start()
        yield self.fake
        self.fake.stop()

    def valid_overrides(self, workdir):
        return ["backend=vertex", "vertex.project=tfscale-test", "vertex.region=us-central1",
                "vertex.bucket=tfscale-test-bucket", f"vertex.api_endpoint={self.fake.address}", "vertex.insecure=true",
                f"vertex.staging_dir={workdir / 'staging'}", f"vertex.output_dir={workdir / 'job_output'}",
                "vertex.poll_interval_s=0.05", "vertex.max_poll_interval_s=0.2"]

    def invalid_overrides(self, workdir):
        good = self.valid_overrides(workdir)
        return [Invalid(["backend=vertex"], "vertex.project", None),
                Invalid([*good, "vertex.region=us-central1-a"], "vertex.region", "us-central1-a"),
                Invalid([*good, "vertex.bucket=gs://tfscale-test-bucket"], "vertex.bucket", "gs://tfscale-test-bucket"),
                Invalid([*good, *MWMS, "cluster.worker.hosts=[10.0.0.2:2222,10.0.0.3:2222]"], "cluster", "workers_2")]

    def check_metrics(self, metrics, run_dir):
        facts = metrics["vertex"]
        assert facts["state"] == "JOB_STATE_SUCCEEDED" and facts["kind"] == "CustomJob"
        (request,) = self.fake.received("CreateCustomJob")
        assert request.custom_job.display_name == facts["display_name"]


def test_every_registered_backend_runs_the_suite():
    from orchestrator.config.registry import BACKENDS

    suites = {cls.name for cls in globals().values()
              if isinstance(cls, type) and issubclass(cls, BasicBackendTestCase) and cls.name}
    assert suites == set(BACKENDS)
