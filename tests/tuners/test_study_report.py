"""The study report: ``study.html`` rendered by headless Chromium, the PNG plots, HParams data after every
trial, and a study that ends cleanly without matplotlib. Studies are built through the tuners API and
stored (no training), so these tests take seconds."""
from __future__ import annotations

import math
import random
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from tuners import Study, write_results
from tuners.results import PLOTS_MISSING

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

SPEC = {"metric": {"tag": "accuracy", "goal": "MAXIMIZE"}, "max_trials": 14, "max_parallel_trials": 14,
        "algorithm": "RANDOM_SEARCH", "seed": 3,
        "parameters": [
            {"name": "learning_rate", "type": "DOUBLE", "min": 1e-4, "max": 0.1, "scale": "log",
             "key": "model.optimizer.learning_rate"},
            {"name": "units", "type": "INTEGER", "min": 16, "max": 256, "key": "model.layers.1.units"},
            {"name": "optimizer", "type": "CATEGORICAL", "values": ["sgd", "adam"], "key": "model.optimizer.name",
             "children": [{"name": "momentum", "type": "DOUBLE", "min": 0.0, "max": 0.99, "when": ["sgd"],
                           "key": "model.optimizer.momentum"}]}]}
MULTI = {**{k: v for k, v in SPEC.items() if k != "metric"},
         "metrics": [{"tag": "accuracy", "goal": "MAXIMIZE"}, {"tag": "model_bytes", "goal": "MINIMIZE"}]}
STOPPED, FAILED = (3, 8), 5


def _accuracy(params: dict, noise: float) -> float:
    lr_term = 0.04 * (math.log10(params["learning_rate"]) + 2) ** 2
    return 0.97 - lr_term - 0.05 * (params["optimizer"] == "sgd") + 0.0003 * params["units"] + noise


def stored_study(directory: Path, spec: dict = SPEC, *, refresh: bool = False) -> Study:
    """Drive a study through ask/tell into a store in ``directory`` (learning curves, two trials stopped early,
    one failed, one still running), then open it again from the store. ``refresh`` writes the results after
    every finished trial, as the sweeper does."""
    multi = "metrics" in spec
    study = Study(spec, store=directory)
    rng = random.Random(0)
    trials = study.suggest()
    for t in trials[:-1]:  # the last one stays ACTIVE
        run = directory / f"trial_{t.id}"
        run.mkdir(parents=True, exist_ok=True)
        (run / "trial.log").write_text("training\n")
        final = _accuracy(t.parameters, rng.uniform(-0.01, 0.01))
        curve = [(step, final - (final - 0.3) * math.exp(-step / 2.5)) for step in range(1, 11)]
        if t.id == FAILED or (t.id in STOPPED and not multi):
            for step, value in curve[:4 if t.id in STOPPED else None]:  # reported while it ran
                study.add_measurement(t.id, step, value)
        if t.id == FAILED:
            study.fail(t.id, "Traceback\nRuntimeError: loss is NaN", log_path=str(run / "trial.log"))
        elif t.id in STOPPED and not multi:
            study.trial(t.id).log_path = str(run / "trial.log")
            study.stop(t.id)
        elif multi:
            study.complete(t.id, {"accuracy": final, "model_bytes": 260.0 * t.parameters["units"]},
                           measurements=curve, log_path=str(run / "trial.log"))
        else:
            study.complete(t.id, None, measurements=curve, log_path=str(run / "trial.log"))
        if refresh:
            write_results(study, directory, plots=False)
    study.close()
    return Study(spec, store=directory)


# ------------------------------------------------------------------------------------- screenshots
def read_png(path: Path) -> np.ndarray:
    """An 8-bit RGB(A) PNG as an ``(height, width, 3)`` array; Pillow when installed, else decoded here."""
    try:
        from PIL import Image
    except ImportError:
        return _decode_png(Path(path).read_bytes())
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and not interlace, (depth, colour, interlace)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    rows = np.zeros((height, stride), dtype=np.uint8)
    prev = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, up_left = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF
        rows[y] = np.frombuffer(bytes(line), dtype=np.uint8)
        prev = line
    return rows.reshape(height, width, bpp)[:, :, :3]


CELL_W, CELL_H = 540, 420


def screenshot_charts(html: Path, chart_ids: list[str], tmp: Path) -> dict[str, int]:
    """Render ``html`` in headless Chromium with each chart pinned to its own cell of a 3-column grid;
    the number of coloured (saturated) pixels in each chart's cell, by chart id. Text, axes and grid
    lines are grey; only the plotted data is coloured."""
    css = ["body{margin:0;background:#fff}header,table{display:none}",
           f".chart{{display:none;position:fixed;width:{CELL_W}px;height:{CELL_H}px;overflow:hidden;"
           "box-sizing:border-box;padding:0;border:0}.chart svg.plot{width:100%;height:auto}"]
    cells = {}
    for i, cid in enumerate(chart_ids):
        left, top = (i % 3) * CELL_W, (i // 3) * CELL_H
        css.append(f"#{cid}{{display:block;left:{left}px;top:{top}px}}")
        cells[cid] = (left, top)
    page = tmp / "grid.html"
    page.write_text(html.read_text().replace("</head>", f"<style>{''.join(css)}</style></head>"))
    shot = tmp / "grid.png"
    rows = -(-len(chart_ids) // 3)
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp / 'chromium-profile'}", f"--screenshot={shot}",
                           f"--window-size={3 * CELL_W},{rows * CELL_H}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    image = read_png(shot).astype(int)
    saturated = image.max(axis=2) - image.min(axis=2) > 60
    return {cid: int(saturated[top:top + CELL_H, left:left + CELL_W].sum()) for cid, (left, top) in cells.items()}


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install "
                                                              "chromium; .ci/run installs it)")


@needs_chromium
def test_study_html_shows_its_plots_in_chromium(tmp_path):
    study = stored_study(tmp_path / "study", refresh=True)
    paths = write_results(study, tmp_path / "study", plots=False)
    study.close()
    counts = screenshot_charts(paths["html"], ["objective", "importance", "curves", "parallel"], tmp_path)
    assert all(n > 300 for n in counts.values()), counts


@needs_chromium
def test_multi_objective_study_html_shows_the_pareto_front_in_chromium(tmp_path):
    study = stored_study(tmp_path / "study", MULTI)
    paths = write_results(study, tmp_path / "study", plots=False)
    study.close()
    html = paths["html"].read_text()
    assert "Pareto front" in html and "Pareto set: trials" in html
    counts = screenshot_charts(paths["html"], ["objective", "objective-1", "pareto", "importance", "curves",
                                               "parallel"], tmp_path)
    assert all(n > 300 for n in counts.values()), counts


def test_an_empty_study_draws_no_data(tmp_path):
    """The screenshot check above counts coloured pixels; a page with nothing to plot has none to count."""
    study = Study(SPEC)
    paths = write_results(study, tmp_path, plots=False)
    html = paths["html"].read_text()
    assert "No trial has reported accuracy yet." in html and "<polyline" not in html and "<circle" not in html


# ---------------------------------------------------------------------------------------- the page
def test_study_html_is_self_contained_with_rounded_values_overrides_and_run_links(tmp_path):
    study = stored_study(tmp_path)
    paths = write_results(study, tmp_path, plots=False)
    html = paths["html"].read_text()
    # Nothing fetched: no scripts, stylesheets or images from elsewhere; the only URL is the SVG namespace.
    assert "<script" not in html and "<link" not in html and "url(" not in html and "<img" not in html
    assert html.replace('xmlns="http://www.w3.org/2000/svg"', "").count("://") == 0
    best = study.best_trial
    assert f"Best trial {best.id}:" in html and " ".join(best.overrides()) in html
    lr = best.parameters["learning_rate"]
    assert f"<td>{lr:.4g}</td>" in html and f"<td>{lr!r}</td>" not in html  # rounded in the table
    assert f'<a href="trial_{best.id}/">trial_{best.id}</a>' in html and 'href="trial_3/trial.log"' in html
    assert "stopped" in html and "RuntimeError: loss is NaN" in html
    assert 'http-equiv="refresh"' in html  # a trial is still running: the page reloads itself
    study.close()


def test_results_are_refreshed_after_each_trial_in_milliseconds(tmp_path):
    spec = {**SPEC, "max_trials": 200, "max_parallel_trials": 200}
    study = Study(spec)
    trials = study.suggest()
    for t in trials:
        curve = [(step, 0.5 + 0.02 * step * t.parameters["units"] / 256) for step in range(1, 21)]
        study.complete(t.id, None, measurements=curve)
    write_results(study, tmp_path, plots=False)  # writes the HParams session of every trial once
    start = time.perf_counter()
    paths = write_results(study, tmp_path, plots=False)
    seconds = time.perf_counter() - start
    assert seconds < 0.5, f"refreshing the results of 200 trials took {seconds:.2f} s"
    assert paths["html"].stat().st_size > 0 and len(list((tmp_path / "tensorboard").iterdir())) == 200
    study.close()


def test_hparams_are_written_after_each_trial_once(tmp_path):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import metadata

    from tuners.metrics import iter_tfrecords

    study = Study(SPEC, store=tmp_path)
    first, second = study.suggest(2)
    study.complete(first.id, 0.9, measurements=[(1, 0.5), (2, 0.9)])
    write_results(study, tmp_path, plots=False)
    logdir = tmp_path / "tensorboard"
    assert [p.name for p in logdir.iterdir()] == [f"trial_{first.id}"]
    (written,) = (logdir / f"trial_{first.id}").iterdir()
    events = [event_pb2.Event.FromString(r) for r in iter_tfrecords(written)]
    values = {v.tag: v for e in events for v in e.summary.value}
    start = metadata.parse_session_start_info_plugin_data(values["_hparams_/session_start_info"].metadata
                                                          .plugin_data.content)
    assert start.hparams["learning_rate"].number_value == pytest.approx(first.parameters["learning_rate"])
    assert start.hparams["optimizer"].string_value == first.parameters["optimizer"]
    end = metadata.parse_session_end_info_plugin_data(values["_hparams_/session_end_info"].metadata
                                                      .plugin_data.content)
    assert end.status == 1  # STATUS_SUCCESS
    study.fail(second.id, "boom")
    write_results(study, tmp_path, plots=False)
    assert sorted(p.name for p in logdir.iterdir()) == [f"trial_{first.id}", f"trial_{second.id}"]
    assert list((logdir / f"trial_{first.id}").iterdir()) == [written]  # not rewritten
    study.close()


def test_overrides_become_hparams():
    from tuners.hparams import overrides_as_hparams

    assert overrides_as_hparams(["model=cnn", "trainer.epochs=3", "+x.y=0.5", "export.enabled=false",
                                 "~trainer.seed", "hydra.run.dir=/tmp/x", "data.name='my data'"]) == {
        "model": "cnn", "trainer.epochs": 3, "x.y": 0.5, "export.enabled": False, "data.name": "my data"}


# --------------------------------------------------------------------------------------------- PNGs
def _png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def test_png_plots_are_readable_and_linked_from_study_md(tmp_path):
    pytest.importorskip("matplotlib")
    study = stored_study(tmp_path)
    paths = write_results(study, tmp_path)
    for name in ("objective_plot", "parameters_plot", "curves_plot"):
        assert _png_size(paths[name])[0] >= 1000, (name, _png_size(paths[name]))
    md = paths["markdown"].read_text()
    assert "[study.html](study.html)" in md
    for png in ("objective.png", "parameters.png", "learning_curves.png"):
        assert f"[{png}]({png})" in md
    study.close()


@pytest.mark.parametrize("low,high", [(1e-3, 5e-3), (2e-4, 0.3), (1e-7, 1.0)])
def test_log_scaled_parameters_get_log_axes_with_labels_apart(low, high):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from tuners.results import _parameter_figure

    spec = {**SPEC, "parameters": [{**SPEC["parameters"][0], "min": low, "max": high}, SPEC["parameters"][1]]}
    study = Study(spec)
    for t in study.suggest(8):
        study.complete(t.id, t.parameters["units"] / 256)
    fig = _parameter_figure(study)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in ax.get_xticklabels()
             if label.get_visible() and label.get_text() and low / 1.2 <= label.get_position()[0] <= high * 1.2]
    assert len(boxes) >= 2, [label.get_text() for label in ax.get_xticklabels()]
    boxes.sort(key=lambda b: b.x0)
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]
    plt.close(fig)


# ------------------------------------------------------------------------------- without matplotlib
NO_MATPLOTLIB = """
import sys
sys.modules["matplotlib"] = None  # what `import matplotlib` meets on a core install: ImportError
"""


def test_a_study_without_matplotlib_ends_with_a_message_instead_of_plots(tmp_path):
    script = NO_MATPLOTLIB + textwrap.dedent(f"""
        from tuners import Study, write_results
        study = Study({SPEC!r}, store={str(tmp_path)!r})
        while not study.is_done:
            for t in study.suggest():
                study.complete(t.id, t.parameters["units"] / 256, measurements=[(1, 0.1)])
                write_results(study, {str(tmp_path)!r}, plots=False)
        paths = write_results(study, {str(tmp_path)!r})
        print(sorted(paths))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert PLOTS_MISSING in proc.stderr and "Traceback" not in proc.stderr
    assert "objective_plot" not in proc.stdout and "'html'" in proc.stdout
    assert PLOTS_MISSING in (tmp_path / "study.md").read_text()
    assert not list(tmp_path.glob("*.png")) and (tmp_path / "study.html").stat().st_size > 0
    assert len(list((tmp_path / "tensorboard").iterdir())) == SPEC["max_trials"]
