"""What tfscale costs on top of a hand-written tf_keras script doing the same work.

Runs, side by side and alternating (this machine is noisy, so only ratios within one run mean anything):

1. ``tfscale`` (the default experiment: digits, 300-100 MLP, 20 epochs, batch 32, export of version NNNN)
   against ``plain_keras.py`` below — the same data split, model, optimizer, epochs, evaluation and
   SavedModel export, written by hand. Goal: wall-time ratio <= 1.03. The same run with
   ``TFSCALE_WARM_TASK=0`` (composition, then the TensorFlow import, one after the other) is timed too, to
   show what overlapping them in the forked task process buys.
2. ``tfscale --cfg job`` (compose + print the config) against ``python -c "import tensorflow"``.
   Goal: <= 0.3x.

Usage: ``python benchmarks/overhead.py [--repeats 3] [--epochs 20]``. Prints medians and ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PLAIN_SCRIPT = textwrap.dedent('''
    import os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    EPOCHS = int(sys.argv[1])
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(0)
    d = load_digits()
    x, y = d.data.astype("float32"), d.target.astype("int64")
    x, x_test, y, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.1 / 0.8, random_state=1, stratify=y)

    def ds(a, b, shuffle):
        out = tf.data.Dataset.from_tensor_slices((a, b))
        if shuffle:
            out = out.shuffle(len(a), seed=0)
        return out.batch(32).prefetch(tf.data.AUTOTUNE)

    inputs = keras.Input(shape=(64,), name="features")
    h = keras.layers.Rescaling(1 / 16.0)(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(300, activation="relu")(h)
    h = keras.layers.Dense(100, activation="relu")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(ds(x_train, y_train, True), epochs=EPOCHS, validation_data=ds(x_val, y_val, False), verbose=2)
    print("test", model.evaluate(ds(x_test, y_test, False), verbose=0))

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="features")])
    def serve(x):
        return {"probabilities": model(x, training=False)}  # the model's one output, as tfscale exports it

    tf.saved_model.save(model, "models/plain/0001", signatures={"serving_default": serve.get_concrete_function()})
''')


def timed(cmd: list[str], cwd: Path, **extra_env: str) -> float:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra_env)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20, help="20 = the default experiment; more shows how the fixed cost amortises")
    args = parser.parse_args()
    tfscale = [sys.executable, "-m", "orchestrator.app.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "plain_keras.py").write_text(PLAIN_SCRIPT)
        timed(tfscale + ["--cfg", "job"], work)  # warm bytecode caches for both sides
        timed([sys.executable, "-c", "import tensorflow"], work)
        runs = {"tfscale": [], "plain": [], "cold": [], "cfg_job": [], "import_tf": []}
        train = tfscale + ["trainer.verbose=2", f"trainer.epochs={args.epochs}"]
        for _ in range(args.repeats):
            runs["plain"].append(timed([sys.executable, "plain_keras.py", str(args.epochs)], work))
            runs["tfscale"].append(timed(train, work))
            runs["cold"].append(timed(train, work, TFSCALE_WARM_TASK="0"))
            runs["import_tf"].append(timed([sys.executable, "-c", "import tensorflow"], work))
            runs["cfg_job"].append(timed(tfscale + ["--cfg", "job"], work))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{'measurement':<34}{'median s':>10}   all runs")
    for key, label in (("plain", "plain tf_keras script"), ("tfscale", "tfscale (default experiment)"),
                       ("cold", "tfscale, TFSCALE_WARM_TASK=0"),
                       ("import_tf", 'python -c "import tensorflow"'), ("cfg_job", "tfscale --cfg job")):
        print(f"{label:<34}{med[key]:>10.2f}   {', '.join(f'{x:.2f}' for x in runs[key])}")
    train_ratio = med["tfscale"] / med["plain"]
    paired = statistics.median(t / p for t, p in zip(runs["tfscale"], runs["plain"]))
    cfg_ratio = med["cfg_job"] / med["import_tf"]
    print(f"\nwall-time ratio tfscale / plain script : {train_ratio:.3f}  (goal <= 1.03; {args.epochs} epochs)")
    print(f"  median of the paired ratios          : {paired:.3f}")
    print(f"fixed cost of tfscale                 : {med['tfscale'] - med['plain']:+.2f} s per run")
    print(f"without the warm task process         : {med['cold'] / med['plain']:.3f}  ({med['cold'] - med['plain']:+.2f} s per run)")
    print(f"tfscale --cfg job / import tensorflow  : {cfg_ratio:.3f}  (goal <= 0.30)")


if __name__ == "__main__":
    main()
