"""Models from config: a layer list of ``_target_`` nodes or a user's builder function.

Every model tfscale trains has the same frame: an input named ``export.input_name`` taking raw features,
a rescaling layer (so serving clients send raw values), the declared body, and the ``model.head`` named
``export.output_name`` in float32: softmax, sigmoid (multi-label), linear (regression) or none (the body's
own output).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Tuple

from orchestrator.config.schema import ModelHead, OptimizerName
from orchestrator.config.targets import check_resolved
from orchestrator.errors import ConfigError
from orchestrator.training import preflight

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from orchestrator.config.schema import ExperimentConfig, OptimizerConfig


def _optimizer(keras: Any, o: OptimizerConfig):
    kwargs = {"learning_rate": o.learning_rate}
    if o.clipnorm:
        kwargs["clipnorm"] = o.clipnorm
    if o.name == OptimizerName.sgd:
        return keras.optimizers.SGD(momentum=o.momentum, nesterov=o.nesterov, **kwargs)
    if o.name == OptimizerName.rmsprop:
        return keras.optimizers.RMSprop(momentum=o.momentum, **kwargs)
    if o.name == OptimizerName.adagrad:
        return keras.optimizers.Adagrad(**kwargs)
    if o.name == OptimizerName.adamw:
        return keras.optimizers.AdamW(weight_decay=o.weight_decay or 0.004, **kwargs)
    return keras.optimizers.Adam(**kwargs)


def _builder(path: str, allowed: Optional[Sequence[str]] = None):
    module, _, fn = path.partition(":")
    try:
        found = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("model.builder", path, f"Cannot import it ({exc}); check the module is importable from where tfscale runs and the function name.") from exc
    if allowed is not None:
        check_resolved("model.builder", f"{module}.{fn}", found, allowed)
    return found


_HYDRA_KEYS = ("_partial_", "_args_", "_recursive_", "_convert_")


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _locate(path: str, allowed: Optional[Sequence[str]] = None, key: str = "_target_") -> Any:
    """The object at a dotted path (``tf_keras.layers.Dense``): the longest importable module, then attributes.

    ``allowed``: module prefixes (``model.allowed_modules``); the object, and every module passed on the way,
    must lie under them or under the path's own package (checked before anything is called). None: no check.
    """
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        walked = [obj]
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
            walked.append(obj)
        if allowed is not None:
            check_resolved(key, path, obj, allowed, walked[:-1])
        return obj
    raise ImportError(f"No module named {parts[0]!r}")


def _targets(spec: Any, key: str) -> Iterator[Tuple[str, str]]:
    """``(config key, path)`` of every ``_target_`` string in a node, nested ones included."""
    if isinstance(spec, dict):
        for k, v in spec.items():
            if k == "_target_" and isinstance(v, str):
                yield f"{key}._target_", v
            else:
                yield from _targets(v, f"{key}.{k}")
    elif isinstance(spec, (list, tuple)):
        for i, v in enumerate(spec):
            yield from _targets(v, f"{key}[{i}]")


def _instantiate(node: DictConfig, allowed: Optional[Sequence[str]] = None, key: str = "model.layers") -> Any:
    """Build one ``_target_`` node.

    A flat node — ``_target_`` plus plain values, as every layer preset is — is built directly (importing
    Hydra's instantiate machinery costs a fifth of a second in the task process). Anything else (nested
    ``_target_`` nodes, ``_partial_``, ``_args_``, ``_recursive_``, ``_convert_``) goes through
    ``hydra.utils.instantiate`` with its full semantics. With ``allowed``, every target of the node is
    resolved and checked (:func:`_locate`) before anything is called.
    """
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(node, resolve=True)
    if isinstance(spec, dict) and isinstance(spec.get("_target_"), str) and not any(k in spec for k in _HYDRA_KEYS):
        kwargs = {k: v for k, v in spec.items() if k != "_target_"}
        if all(_plain(v) for v in kwargs.values()):
            return _locate(spec["_target_"], allowed, f"{key}._target_")(**kwargs)
    if allowed is not None:
        for target_key, path in _targets(spec, key):
            _locate(path, allowed, target_key)
    from hydra.utils import instantiate

    return instantiate(node)


def _checked_layer(keras: Any, key: str, node: Any, allowed: Optional[Sequence[str]]) -> Any:
    """One layer of ``model.layers``, its arguments checked first (the pre-flight's first step)."""
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(node, resolve=True)
    cls, kwargs = None, {}
    if isinstance(spec, dict) and isinstance(spec.get("_target_"), str) and not any(k in spec for k in ("_args_", "_partial_")):
        cls = _locate(spec["_target_"], allowed, f"{key}._target_")
        kwargs = {k: v for k, v in spec.items() if not (k.startswith("_") and k.endswith("_"))}
        if isinstance(cls, type):
            preflight.check_arguments(key, cls, kwargs, keras)
    try:
        return _instantiate(node, allowed, key)
    except ConfigError:
        raise
    except Exception as exc:  # import and argument errors alike
        if isinstance(cls, type):
            raise preflight.explain_failure(key, cls, kwargs, exc, keras, target=spec["_target_"]) from None
        raise


def _body(cfg: ExperimentConfig, keras: Any, input_shape: Sequence[int], num_classes: int):
    from omegaconf import OmegaConf

    m = cfg.model
    allowed = None if m.allow_any_target else [str(a) for a in m.allowed_modules]
    if m.builder:
        kwargs = OmegaConf.to_container(m.builder_kwargs, resolve=True)
        return [_builder(m.builder, allowed)(tuple(input_shape), num_classes, **kwargs)]
    layers = []
    for i, node in enumerate(m.layers):
        key = f"model.layers[{i}]"
        try:
            layer = _checked_layer(keras, key, node, allowed) if cfg.trainer.preflight else _instantiate(node, allowed, key)
        except ConfigError:
            raise
        except Exception as exc:  # import and argument errors alike
            raise ConfigError(key, OmegaConf.to_container(node, resolve=True),
                              f"Could not build this layer: {exc}".rstrip(".") + ". Check _target_ and its arguments.") from exc
        preflight.remember(layer, key, str(node.get("_target_", "")) if hasattr(node, "get") else "")
        layers.append(layer)
    return layers


def _head(cfg: ExperimentConfig, keras: Any, x: Any, num_classes: int, target: Optional[Tuple[float, float]]) -> Any:
    """The output layer(s) of ``model.head`` on the body's output ``x``, named ``export.output_name``, in float32
    (also under mixed precision, where it keeps the loss stable).

    ``linear`` learns standardised targets and scales them back with ``target`` (offset, scale), so the model
    answers in the targets' units while its last Dense starts near the right range. ``none`` keeps the body's
    output; a single one is renamed (and cast) so serving and quantization find it under the same name.
    """
    name = cfg.export.output_name
    head = cfg.model.head
    if head == ModelHead.none:
        if isinstance(x, (list, tuple, dict)):
            return x
        return keras.layers.Activation("linear", dtype="float32", name=name)(x)
    if len(x.shape) > 2:
        x = keras.layers.Flatten()(x)
    if head == ModelHead.linear:
        if target is None:
            return keras.layers.Dense(num_classes, dtype="float32", name=name)(x)
        x = keras.layers.Dense(num_classes, dtype="float32", name=f"{name}_standardised")(x)
        offset, spread = target
        return keras.layers.Rescaling(float(spread), offset=float(offset), dtype="float32", name=name)(x)
    activation = "sigmoid" if head == ModelHead.sigmoid else "softmax"
    return keras.layers.Dense(num_classes, activation=activation, dtype="float32", name=name)(x)


def build_model(cfg: ExperimentConfig, input_shape: Sequence[int], num_classes: int, scale: float,
                target: Optional[Tuple[float, float]] = None):
    """Build and compile the experiment's model (call inside the strategy's scope).

    ``num_classes``: the head's units (classes, labels, or values per example). ``target``: ``(offset, scale)``
    of regression targets (``Splits.target_stats``); None leaves a linear head unscaled.
    """
    from orchestrator.runtime.tf_env import import_keras

    keras = import_keras()
    inputs = keras.Input(shape=tuple(input_shape), name=cfg.export.input_name, dtype="float32")
    x = keras.layers.Rescaling(1.0 / float(scale), name="rescale")(inputs)
    for layer in _body(cfg, keras, input_shape, num_classes):
        x = layer(x)
    outputs = _head(cfg, keras, x, num_classes, target)
    model = keras.Model(inputs, outputs, name=cfg.model.name)
    model.compile(optimizer=_optimizer(keras, cfg.model.optimizer), loss=cfg.model.loss, metrics=_metrics(cfg, keras),
                  steps_per_execution=cfg.strategy.steps_per_execution)
    return model


def _metrics(cfg: ExperimentConfig, keras: Any) -> list:
    """``model.metrics`` for the head: tf_keras reads "accuracy" from the label shape, which for multi-hot
    labels means the argmax match; a sigmoid head's accuracy is per label (still named as configured)."""
    if cfg.model.head != ModelHead.sigmoid:
        return list(cfg.model.metrics)
    return [keras.metrics.BinaryAccuracy(name=str(m)) if str(m) in ("accuracy", "acc") else m for m in cfg.model.metrics]
