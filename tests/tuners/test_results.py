import csv

import pytest

from tuners import Study, progress_line, read_tb_scalar, write_results

SPEC = {"metric": {"tag": "accuracy", "goal": "MAXIMIZE"}, "max_trials": 5, "max_parallel_trials": 5,
        "algorithm": "QUASI_RANDOM_SEARCH",
        "parameters": [{"name": "lr", "type": "DOUBLE", "min": 1e-4, "max": 1.0, "scale": "log",
                        "key": "model.optimizer.learning_rate"},
                       {"name": "opt", "type": "CATEGORICAL", "values": ["sgd", "adam"], "key": "model.opt"}]}


def make_study():
    study = Study(SPEC)
    trials = study.suggest(5)
    for t, value in zip(trials[:3], [0.8, 0.95, 0.7]):
        study.complete(t.id, value, measurements=[(0, value / 2), (1, value)])
    study.fail(trials[3].id, "Traceback\nRuntimeError: diverged", log_path="/logs/3")
    return study, trials


def test_progress_line():
    study, trials = make_study()
    assert progress_line(study) == "[study] 4/5 done · 1 running · 1 failed · best accuracy=0.95 (trial 1)"


def test_results_files(tmp_path):
    study, trials = make_study()
    paths = write_results(study, tmp_path)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["status"] for r in rows] == ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED", "ACTIVE"]
    assert rows[3]["error"].endswith("RuntimeError: diverged") and rows[3]["log_path"] == "/logs/3"
    assert float(rows[1]["accuracy"]) == 0.95 and rows[1]["opt"] in ("sgd", "adam")
    table = [line for line in paths["markdown"].read_text().splitlines() if line.startswith("| ")]
    assert table[1].startswith("| 1 | COMPLETED") and table[2].startswith("| 0 |")
    best = paths["best_overrides"].read_text().strip()
    assert best == " ".join(trials[1].overrides()) and best.startswith("model.optimizer.learning_rate=")
    for name in ("objective_plot", "parameters_plot"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_tb_scalar(paths["tensorboard"] / "trial_1", "accuracy")[-1][1] == pytest.approx(0.95)
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    from tuners.metrics import iter_tfrecords

    # One HParams session per finished trial; no experiment summary, which would hide other runs' settings.
    assert not list(paths["tensorboard"].glob("events.out.tfevents.*"))
    assert sorted(p.name for p in paths["tensorboard"].iterdir()) == [f"trial_{i}" for i in range(4)]
    (session,) = (paths["tensorboard"] / "trial_1").glob("events.out.tfevents.*")
    values = [v for r in iter_tfrecords(session) for v in event_pb2.Event.FromString(r).summary.value]
    (start,) = [v for v in values if v.tag == "_hparams_/session_start_info"]
    assert start.metadata.plugin_data.plugin_name == "hparams"
    data = plugin_data_pb2.HParamsPluginData.FromString(start.metadata.plugin_data.content)
    assert sorted(data.session_start_info.hparams) == ["lr", "opt"]
