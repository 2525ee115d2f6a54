"""The pre-flight of a run: what training would find out only later, checked in seconds before ``fit``.

It runs in the task process, which imported TensorFlow while the parent composed the config, once the data
is loaded (its input shape is needed) and before the first epoch:

1. **Layer arguments** (while the body is built, :func:`check_arguments`): a value of the wrong type is
   named with the type the layer expects (tf_keras layers take ``use_bias: "no"`` and train with a bias);
   an argument a layer does not take gets the closest one it does take, from the layer's ``__init__``
   signature and the keyword arguments every Keras layer accepts (:func:`explain_failure`).
2. **A forward pass** on a few training rows (:func:`run`): shape and dtype mistakes, named by layer.
3. **The serving signatures**, traced with the functions the export uses.
4. **The conversions the run will make**, when configured: the *untrained* model is saved as a version
   would be and converted with ``quantization.mode`` (int8 calibrated on a few rows), and with
   ``tensorflowjs_converter`` for ``deploy=tfjs``; an op the converter cannot convert or quantize is named.

Every failure is a :class:`ConfigError`: one line naming the layer (``model.layers[2]``) or op and the fix,
exit status 2, no epoch run and no version published. ``trainer.preflight=false`` skips all of it (a layer
Keras refuses still fails when it is built, with Keras' own message).
"""
from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import shutil
import tempfile
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

log = logging.getLogger(__name__)

#: Keyword arguments ``tf_keras.layers.Layer.__init__`` accepts besides its named ones (``validate_kwargs``).
BASE_LAYER_ARGUMENTS = {"trainable": True, "name": None, "dtype": None, "dynamic": False, "input_dim": None,
                        "input_shape": None, "batch_input_shape": None, "batch_size": None, "weights": None,
                        "activity_regularizer": None, "autocast": True, "implementation": None}

#: Rows of the training split the forward pass runs on.
FORWARD_ROWS = 8
#: Calibration batches of the pre-flight int8 conversion (the real one uses quantization.calibration_batches).
CALIBRATION_BATCHES = 4

# What the arguments tf_keras layers declare without a telling default take (the rest: the default's type).
_EXPECTED = {"units": "int", "filters": "int", "kernel_size": "ints", "pool_size": "ints", "strides": "ints",
             "rate": "float", "target_shape": "ints", "dims": "ints", "output_dim": "int", "input_dim": "int",
             "num_heads": "int", "key_dim": "int", "stddev": "float", "scale": "float", "size": "ints",
             "depth_multiplier": "int", "name": "str", "activation": "name", "seed": "int"}
_NAME_SUFFIXES = ("_initializer", "_regularizer", "_constraint", "activation")
_DESCRIBE = {"bool": "true or false", "int": "an integer (e.g. 64)", "float": "a number (e.g. 0.5)",
             "str": "a string", "ints": "an integer or a list of integers (e.g. 3 or [3, 3])",
             "name": "a name (e.g. relu, glorot_uniform) or a _target_ node"}


# ------------------------------------------------------------------------------------ layer keys
_LAYER_KEYS: "weakref.WeakKeyDictionary[Any, Tuple[str, str]]" = weakref.WeakKeyDictionary()


def remember(layer: Any, key: str, target: str = "") -> None:
    """Record that ``layer`` was built from the config node ``key`` (``model.layers[2]``, its ``_target_``)."""
    try:
        _LAYER_KEYS[layer] = (key, target)
    except TypeError:  # an object that cannot be weakly referenced: messages name it by its Keras name only
        pass


def layer_keys(model: Any = None) -> Dict[str, Tuple[str, str]]:
    """``{Keras layer name: (config key, _target_)}`` of the layers of ``model`` (None: every layer built in
    this process) that came from ``model.layers``."""
    if model is None:
        return {layer.name: entry for layer, entry in list(_LAYER_KEYS.items())}
    keys: Dict[str, Tuple[str, str]] = {}
    for layer in getattr(model, "layers", []):
        entry = _LAYER_KEYS.get(layer)
        if entry is not None:
            keys[layer.name] = entry
    return keys


# ------------------------------------------------------------------------------------ arguments
def accepted_arguments(cls: Any, keras: Any = None) -> Tuple[Dict[str, Any], bool]:
    """``({argument: default}, open)``: what ``cls(...)`` takes by name, following ``**kwargs`` up the classes
    that forward them, and whether it takes anything at all (a ``**kwargs`` nobody checks).

    A Keras layer's chain ends at ``Layer.__init__``, whose ``**kwargs`` are :data:`BASE_LAYER_ARGUMENTS`.
    """
    base = getattr(getattr(keras, "layers", None), "Layer", None)
    names: Dict[str, Any] = {}
    for klass in getattr(cls, "__mro__", (cls,)):
        init = klass.__dict__.get("__init__") if isinstance(klass, type) else klass
        if init is None:
            continue
        if klass is object:
            return names, False
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature: anything may be right
            return names, True
        forwards = False
        for p in params:
            if p.name == "self" or p.kind == p.VAR_POSITIONAL:
                continue
            if p.kind == p.VAR_KEYWORD:
                forwards = True
            else:
                names.setdefault(p.name, p.default)
        if base is not None and klass is base:
            for name, default in BASE_LAYER_ARGUMENTS.items():
                names.setdefault(name, default)
            return names, False
        if not forwards:
            return names, False
    return names, True


def _kind(name: str, default: Any) -> Optional[str]:
    if name == "axis" or name.endswith("axes"):
        return "ints"
    if name.endswith(_NAME_SUFFIXES):
        return "name"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (tuple, list)):
        return "ints" if all(isinstance(v, int) and not isinstance(v, bool) for v in default) else None
    if default is None or default is inspect.Parameter.empty:
        return _EXPECTED.get(name)
    return None


def _fits(kind: str, value: Any) -> bool:
    if value is None or isinstance(value, dict) or callable(value):
        return True  # None: the layer's default; a dict: a nested _target_ node or a Keras config
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("str", "name"):
        return isinstance(value, str)
    if kind == "ints":
        if isinstance(value, (list, tuple)):
            return all(v is None or _fits("ints", v) for v in value)
        return isinstance(value, int) and not isinstance(value, bool)
    return True


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}" + ("; write it without quotes" if re.fullmatch(r"-?[\d.e+-]+|true|false", value) else "")
    return f"{value!r} ({type(value).__name__})"


def check_arguments(key: str, cls: Any, kwargs: Mapping[str, Any], keras: Any = None) -> None:
    """Refuse an argument of the wrong type before the layer is built (tf_keras converts or ignores many)."""
    accepted, _ = accepted_arguments(cls, keras)
    name = getattr(cls, "__name__", str(cls))
    for arg, value in kwargs.items():
        if arg not in accepted:
            continue  # unknown: Keras refuses it when the layer is built, and explain_failure names the fix
        kind = _kind(arg, accepted[arg])
        if kind is not None and not _fits(kind, value):
            raise ConfigError(f"{key}.{arg}", value, f"{name}'s '{arg}' takes {_DESCRIBE[kind]}, not {_shown(value)}.")


def explain_failure(key: str, cls: Any, kwargs: Mapping[str, Any], exc: BaseException, keras: Any = None,
                    target: str = "") -> ConfigError:
    """The ConfigError for a layer whose constructor raised: an unknown argument with the closest one it
    takes (from its signature), else the layer's own first line."""
    accepted, is_open = accepted_arguments(cls, keras)
    name = getattr(cls, "__name__", str(cls))
    said = str(exc)
    if not is_open:
        for arg in kwargs:
            # Named in the error too ("Keyword argument not understood", "unexpected keyword argument"): a layer
            # may take an argument its signature does not show (popped from **kwargs).
            if arg not in accepted and repr(arg)[1:-1] in said:
                near = difflib.get_close_matches(arg, list(accepted), n=1, cutoff=0.6)
                hint = f"Did you mean '{near[0]}'? " if near else ""
                shown = [a for a in accepted if a not in BASE_LAYER_ARGUMENTS][:14]
                return ConfigError(f"{key}.{arg}", kwargs[arg], f"{name} takes no argument '{arg}'. {hint}Its arguments: "
                                   f"{', '.join(shown)} (and Keras' name, dtype, trainable, ...).")
    first = (said.strip().splitlines() or [type(exc).__name__])[0]
    return ConfigError(key, {"_target_": target or name, **kwargs},
                       f"{name} could not be built: {first}".rstrip(".") + ". Check its arguments.")


# ------------------------------------------------------------------------------------ model errors
_LAYER_IN_MESSAGE = re.compile(r"""layer ["'](?P<name>[^"']+)["']""")


def _layer_error(model_or_keys: Any, exc: BaseException, what: str, fix: str) -> ConfigError:
    keys = model_or_keys if isinstance(model_or_keys, dict) else layer_keys(model_or_keys)
    text = " ".join(str(exc).split())
    m = _LAYER_IN_MESSAGE.search(text)
    layer = m.group("name") if m else None
    detail = re.sub(r"^.*?Exception encountered when calling layer [^:]*:\s*", "", text)[:220]
    key, target = keys.get(layer or "", ("model.layers" if layer else "model", ""))
    where = f"layer '{layer}'" if layer else "the model"
    return ConfigError(key, target or layer or "", fix, problem=f"{what} failed in {where}: {detail}".rstrip("."))


def built(build: Callable[[], Any]) -> Any:
    """``build()`` (``build_model``), with an error while the layers are connected named by its layer."""
    try:
        return build()
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # Keras' shape and dtype checks while connecting the layers
        raise _layer_error(layer_keys(), exc, "connecting the layers",
                           "Fix this layer's arguments or the layers before it (the data's rows go in as they are; "
                           "e.g. a Reshape to data.image_shape comes before Conv2D).") from None


# ------------------------------------------------------------------------------------ the run
@contextmanager
def _quiet(log_file: Path) -> Iterator[None]:
    """Send what TensorFlow's C++ code prints (converter logs, MLIR errors) to ``log_file``, not the terminal."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as sink:
        saved = []
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                except OSError:
                    continue
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _rows(splits: Any, n: int) -> Any:
    rows = getattr(splits, "sample_x", None) if getattr(splits, "streaming", False) else getattr(splits, "x_train", None)
    if rows is None or not len(rows):
        return None
    return rows[:n].astype("float32")


def _signature_functions(tf: Any, model: Any, cfg: ExperimentConfig, input_shape: Any) -> Dict[str, Any]:
    from orchestrator.artifacts import export

    return export.signature_functions(tf, model, input_shape, cfg.export.input_name, cfg.export.output_name,
                                      **export.signature_options(cfg))


def _with_layer_key(err: ConfigError, keys: Mapping[str, Tuple[str, str]]) -> ConfigError:
    """A converter's error, naming the config node of the layer its op belongs to when that is known."""
    for _, where in getattr(err, "ops", None) or []:
        for part in re.split(r"[/;]", where or ""):
            if part in keys:
                node, target = keys[part]
                problem = getattr(err, "problem_text", str(err))
                return ConfigError(node, target, err.fix, problem=f"quantization={err.value}: {problem}")
    return err


def run(cfg: ExperimentConfig, model: Any, splits: Any, run_dir: Path, *, tf: Any, convert: bool = True) -> Dict[str, float]:
    """Forward pass, signature trace and (``convert``: on the chief, when configured) the conversions of the
    untrained ``model``; returns the seconds each took (the run record's ``preflight``)."""
    from orchestrator.config.schema import DeployTarget, QuantizationMode

    seconds: Dict[str, float] = {}
    keys = layer_keys(model)
    start = time.perf_counter()
    try:  # the export reuses these traces (see export.signature_functions)
        functions = _signature_functions(tf, model, cfg, splits.input_shape)
        concrete = {name: fn.get_concrete_function() for name, fn in functions.items()}
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model the signature cannot wrap is the config's
        raise _layer_error(keys, exc, "tracing the serving signature",
                           "Give the model outputs the export can serve (see export.outputs and export.signatures).") from None
    seconds["signature"] = time.perf_counter() - start

    start = time.perf_counter()
    rows = _rows(splits, FORWARD_ROWS)
    if rows is not None:  # through the traced serving function: what a served version will compute
        try:
            concrete[next(iter(concrete))](tf.constant(rows))
        except Exception as exc:  # noqa: BLE001 - any failure of the model on real rows is the config's
            raise _layer_error(keys, exc, "a forward pass on training rows",
                               "Fix this layer's arguments or the layers before it.") from None
    seconds["forward"] = time.perf_counter() - start

    q = cfg.quantization.mode
    tfjs = cfg.deploy.target == DeployTarget.tfjs and cfg.export.enabled
    if convert and (q != QuantizationMode.none or tfjs):
        start = time.perf_counter()
        _conversions(cfg, model, splits, Path(run_dir), keys, tfjs=tfjs, tf=tf)
        seconds["conversion"] = time.perf_counter() - start
    log.info("pre-flight passed in %.2fs (%s)", sum(seconds.values()),
             ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items()))
    return {k: round(v, 3) for k, v in seconds.items()}


def _conversions(cfg: ExperimentConfig, model: Any, splits: Any, run_dir: Path, keys: Mapping[str, Tuple[str, str]], *,
                 tfjs: bool, tf: Any) -> None:
    from orchestrator.artifacts import quantization
    from orchestrator.artifacts.export import save_model, signature_options
    from orchestrator.config.quantization import CALIBRATED_MODES
    from orchestrator.config.schema import QuantizationMode

    q = cfg.quantization
    work = Path(tempfile.mkdtemp(prefix="preflight-", dir=run_dir))
    log_file = run_dir / "preflight.log"
    try:
        with _quiet(log_file):
            save_model(tf, quantization.local_copy(model, q.mode), work / "saved_model", splits.input_shape,
                       cfg.export.input_name, cfg.export.output_name, **signature_options(cfg))
        if q.mode != QuantizationMode.none:
            calibration = None
            if q.mode in CALIBRATED_MODES:
                calibration = splits.calibration_rows(min(int(q.calibration_batches), CALIBRATION_BATCHES),
                                                      int(q.calibration_batch_size), seed=cfg.trainer.seed)
            try:
                with _quiet(log_file):
                    quantization.convert(work / "saved_model", str(q.mode), calibration=calibration,
                                         int8_io=bool(q.int8_io), dense_per_channel=bool(q.dense_per_channel))
            except quantization.UnsupportedOpsError as err:
                raise _with_layer_key(err, keys) from None
        if tfjs:
            from orchestrator.deploy.tfjs import check_convertible

            check_convertible(cfg, work / "saved_model", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
