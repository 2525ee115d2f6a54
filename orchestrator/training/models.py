"""Models from config: a layer list of ``_target_`` nodes or a user's builder function.

Every model tfscale trains has the same frame: an input named ``export.input_name`` taking raw features,
a rescaling layer (so serving clients send raw values), the declared body, and the ``model.head`` named
``export.output_name`` in float32: softmax, sigmoid (multi-label), linear (regression) or none (the body's
own output).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple

from orchestrator.config.schema import ModelHead, OptimizerName
from orchestrator.errors import ConfigError

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


def _builder(path: str):
    module, _, fn = path.partition(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("model.builder", path, f"Cannot import it ({exc}); check the module is importable from where tfscale runs and the function name.") from exc


_HYDRA_KEYS = ("_partial_", "_args_", "_recursive_", "_convert_")


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _locate(path: str) -> Any:
    """The object at a dotted path (``tf_keras.layers.Dense``): the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"No module named {parts[0]!r}")


def _instantiate(node: DictConfig) -> Any:
    """Build one ``_target_`` node.

    A flat node — ``_target_`` plus plain values, as every layer preset is — is built directly (importing
    Hydra's instantiate machinery costs a fifth of a second in the task process). Anything else (nested
    ``_target_`` nodes, ``_partial_``, ``_args_``, ``_recursive_``, ``_convert_``) goes through
    ``hydra.utils.instantiate`` with its full semantics.
    """
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(node, resolve=True)
    if isinstance(spec, dict) and isinstance(spec.get("_target_"), str) and not any(k in spec for k in _HYDRA_KEYS):
        kwargs = {k: v for k, v in spec.items() if k != "_target_"}
        if all(_plain(v) for v in kwargs.values()):
            return _locate(spec["_target_"])(**kwargs)
    from hydra.utils import instantiate

    return instantiate(node)


def _body(cfg: ExperimentConfig, keras: Any, input_shape: Sequence[int], num_classes: int):
    from omegaconf import OmegaConf

    m = cfg.model
    if m.builder:
        kwargs = OmegaConf.to_container(m.builder_kwargs, resolve=True)
        return [_builder(m.builder)(tuple(input_shape), num_classes, **kwargs)]
    layers = []
    for i, node in enumerate(m.layers):
        try:
            layers.append(_instantiate(node))
        except Exception as exc:  # import and argument errors alike
            raise ConfigError(f"model.layers[{i}]", OmegaConf.to_container(node, resolve=True),
                              f"Could not build this layer: {exc}".rstrip(".") + ". Check _target_ and its arguments.") from exc
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
    model.compile(optimizer=_optimizer(keras, cfg.model.optimizer), loss=cfg.model.loss, metrics=list(cfg.model.metrics),
                  steps_per_execution=cfg.strategy.steps_per_execution)
    return model
