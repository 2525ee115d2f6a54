"""``tfscale data convert``: an .npz, .csv or Parquet file (or the bundled digits) into TFRecord or CSV shards.

    tfscale data convert --digits --output shards/digits --shards 16
    tfscale data convert --input data.npz --output shards/mine --shards 64 --features-key x --label-key y
    tfscale data convert --input table.parquet --output shards/table --format csv
    tfscale data=tfrecord data.spec=shards/digits          # train on it, streamed

The input is split into train/validation/test exactly as ``data=files`` (or ``data=digits``) splits it in
memory — same ``--validation-split``, ``--test-split`` and ``--seed`` — so a model trained on the shards
sees the same examples. Each split is written as shards of contiguous rows, with a ``spec.json`` holding
the feature spec, the label key, the class count, the rescaling and per split the file pattern and
record count. The output directory is published atomically (written to a hidden temporary sibling, then
renamed); it must not exist yet. ``--output gs://bucket/shards`` (or ``s3://``) publishes it to a bucket
through the same publisher: written locally, then uploaded with ``spec.json`` last, so a reader that finds
the spec finds every shard.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Tuple

from orchestrator.errors import ConfigError

PARQUET_EXTRA = "pip install 'tfscale[parquet]'  (or: pip install pyarrow)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfscale data convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="an .npz (arrays --features-key, --label-key), .csv (header; label column --label-key) or .parquet file")
    src.add_argument("--digits", action="store_true", help="scikit-learn's bundled 8x8 digits (what data=digits trains on)")
    p.add_argument("--output", required=True, help="directory to create (must not exist): a local path or a bucket URI (gs://, s3://)")
    p.add_argument("--shards", type=int, default=16, help="training shards (default 16)")
    p.add_argument("--eval-shards", type=int, default=None, help="validation / test shards (default: shards // 8, at least 1)")
    p.add_argument("--format", choices=("tfrecord", "csv"), default="tfrecord", help="shard format (default tfrecord)")
    p.add_argument("--features-key", default="x", help="npz array / Parquet list column of the features; the TFRecord feature name")
    p.add_argument("--label-key", default="y", help="npz array / CSV or Parquet column of the labels; the label's name in the shards")
    p.add_argument("--validation-split", type=float, default=0.1)
    p.add_argument("--test-split", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0, help="the split's seed (data.shuffle_seed)")
    p.add_argument("--scale", type=float, default=None, help="rescaling recorded in spec.json (default: the dataset's, as data=files computes it)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    return p


def _check(args: argparse.Namespace) -> None:
    """Bad arguments: one line naming the flag, the value and the fix, before any data is read."""
    if args.shards < 1:
        raise ConfigError("--shards", args.shards, "Write at least 1 shard (as many as the workers that will read them, or more).")
    if args.eval_shards is not None and args.eval_shards < 1:
        raise ConfigError("--eval-shards", args.eval_shards, "Write at least 1 validation/test shard.")
    for flag, value in (("--validation-split", args.validation_split), ("--test-split", args.test_split)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(flag, value, "It is a fraction of the rows: use a value in [0, 1).")
    if args.validation_split + args.test_split >= 1.0:
        raise ConfigError("--validation-split", args.validation_split, "validation + test splits leave no training rows; keep the sum below 1.")
    from orchestrator.artifacts import storage
    from orchestrator.config.streams import check_uri

    if storage.is_remote(args.output):
        check_uri("--output", args.output)
        storage.check_access(args.output, "--output")
    if storage.exists(args.output):
        raise ConfigError("--output", args.output, "It already exists; the converter publishes a new directory. Choose another path or remove it.")
    if args.input:
        if not os.path.isfile(args.input):
            raise ConfigError("--input", args.input, f"No such file (looked in {os.path.abspath(args.input)}).")
        if not args.input.lower().endswith((".npz", ".csv", ".parquet", ".pq")):
            raise ConfigError("--input", args.input, "Give an .npz, .csv or .parquet file.")


def _parquet_arrays(path: str, features_key: str, label_key: str):
    """Features and labels of a Parquet table: a list column ``features_key``, else every other column."""
    import numpy as np

    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("--input", path, f"Reading Parquet needs pyarrow, which is not installed: {PARQUET_EXTRA}.") from exc
    table = pq.read_table(path)
    if label_key not in table.column_names:
        raise ConfigError("--label-key", label_key, f"{path} has columns {table.column_names}; name the label column.")
    y = table.column(label_key).to_numpy().astype("int64")
    if features_key in table.column_names:
        x = np.stack(table.column(features_key).to_numpy(zero_copy_only=False)).astype("float32")
        columns = None
    else:
        columns = [c for c in table.column_names if c != label_key]
        x = np.column_stack([table.column(c).to_numpy().astype("float32") for c in columns])
    return x, y, columns


def _splits(args: argparse.Namespace) -> Tuple[object, str, Optional[List[str]]]:
    """The three splits (as the in-memory path would make them), the source's name and CSV column names."""
    from omegaconf import OmegaConf

    from orchestrator.config.schema import DataConfig
    from orchestrator.training.data import load_splits, split_arrays

    base = {"validation_split": args.validation_split, "test_split": args.test_split, "shuffle_seed": args.seed,
            "limit": args.limit, "scale": args.scale, "features_key": args.features_key, "label_key": args.label_key}
    if args.digits:
        d = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "digits", **base})
        return load_splits(d), "digits", None
    lower = args.input.lower()
    if lower.endswith((".parquet", ".pq")):
        x, y, columns = _parquet_arrays(args.input, args.features_key, args.label_key)
        d = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "files", "path": args.input, **base})
        return split_arrays(x, y, d), args.input, columns
    d = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "files", "path": args.input, **base})
    columns = None
    if lower.endswith(".csv"):
        with open(args.input) as f:
            columns = [c.strip() for c in f.readline().strip().split(",") if c.strip() != args.label_key]
    return load_splits(d), args.input, columns


def convert(argv: List[str]) -> int:
    """``tfscale data convert ...``: write the shards and print where they are and how to train on them."""
    from orchestrator.training.shards import write_dataset

    args = _parser().parse_args(argv)
    _check(args)
    splits, source, columns = _splits(args)
    eval_shards = args.eval_shards or max(1, args.shards // 8)
    arrays = {"train": (splits.x_train, splits.y_train), "validation": (splits.x_val, splits.y_val),
              "test": (splits.x_test, splits.y_test)}
    out = write_dataset(args.output, arrays, shards=args.shards, eval_shards=eval_shards, fmt=args.format,
                        features_key=args.features_key, label_key=args.label_key, num_classes=splits.num_classes,
                        scale=splits.scale, source=source, seed=args.seed, columns=columns)
    counts = ", ".join(f"{k} {len(v[1])}" for k, v in arrays.items() if len(v[1]))
    option = "tfrecord" if args.format == "tfrecord" else "csv_shards"
    print(f"tfscale data convert: {source} -> {out} ({args.format}, {args.shards} training shards; records: {counts})")
    print(f"train on it: tfscale data={option} data.spec={out}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``tfscale data SUBCOMMAND``: ``convert`` (the only one)."""
    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: tfscale data convert [-h] (--input FILE | --digits) --output DIR [--shards N] ...\n\n"
              "Subcommands:\n  convert   write .npz / .csv / Parquet (or the bundled digits) as TFRecord or CSV shards")
        return 0 if argv else 2
    if argv[0] != "convert":
        raise ConfigError("tfscale data", argv[0], "The only subcommand is 'convert': tfscale data convert --help.")
    return convert(argv[1:])
