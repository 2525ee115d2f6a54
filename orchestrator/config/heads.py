"""Checks of ``model.head`` against the loss, the metrics, the data, the export and the quantization gate.

The head decides what a model predicts — one class (``softmax``), independent labels (``sigmoid``), values
(``linear``) — and everything downstream must agree with it. These are config checks: no TensorFlow.
"""
from __future__ import annotations

import enum
from typing import Iterable

from orchestrator.config.schema import Choice, DataName, ExperimentConfig, ExtraOutput, ModelHead, SignatureKind
from orchestrator.errors import ConfigError

# Keras names (and aliases) of the losses, by what they compare.
CLASS_ID_LOSSES = frozenset({"sparse_categorical_crossentropy"})
ONE_HOT_LOSSES = frozenset({"categorical_crossentropy", "categorical_hinge", "kl_divergence", "kld", "kullback_leibler_divergence"})
MULTI_LABEL_LOSSES = frozenset({"binary_crossentropy", "binary_focal_crossentropy", "hinge", "squared_hinge"})
REGRESSION_LOSSES = frozenset({"mse", "mae", "mape", "msle", "mean_squared_error", "mean_absolute_error",
                               "mean_absolute_percentage_error", "mean_squared_logarithmic_error", "huber",
                               "huber_loss", "log_cosh", "logcosh"})
ACCURACY_METRICS = frozenset({"accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy",
                              "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy", "auc", "precision", "recall"})

# Datasets whose labels are class ids, and those whose targets are values.
CLASS_DATA = frozenset({DataName.digits, DataName.mnist, DataName.fashion_mnist, DataName.cifar10,
                        DataName.tfrecord, DataName.csv_shards})
VALUE_DATA = frozenset({DataName.diabetes})


class PredictionKind(Choice):
    """What a model's output means, for evaluation and the export: one class, several labels, or values."""

    class_id = enum.auto()  # argmax over the output
    multi_label = enum.auto()  # every output over 0.5
    regression = enum.auto()  # the output itself


def prediction_kind(cfg: ExperimentConfig) -> str:
    """How to read the model's output: a class id (argmax), multi-hot labels (over 0.5) or values.

    ``head=none`` is read by its loss: a regression loss means values, a multi-label loss labels.
    """
    head = cfg.model.head
    if head == ModelHead.linear:
        return PredictionKind.regression
    if head == ModelHead.sigmoid:
        return PredictionKind.multi_label
    if head == ModelHead.none:
        loss = str(cfg.model.loss)
        if loss in REGRESSION_LOSSES:
            return PredictionKind.regression
        if loss in MULTI_LABEL_LOSSES:
            return PredictionKind.multi_label
    return PredictionKind.class_id


def _duplicates(key: str, values: Iterable[str]) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(key, [str(x) for x in values], f"{v!r} is listed twice; list each once.")
        seen.add(v)


def check_head(cfg: ExperimentConfig) -> None:
    """The loss, metrics, data, export signatures and quantization gate suit ``model.head``."""
    m, head = cfg.model, cfg.model.head
    loss = str(m.loss)
    if head == ModelHead.linear and loss not in REGRESSION_LOSSES:
        raise ConfigError("model.loss", loss, "model.head=linear predicts values: use a regression loss, e.g. model.loss=mse "
                          "(or mae, huber).")
    if head == ModelHead.softmax and (loss in REGRESSION_LOSSES or loss in MULTI_LABEL_LOSSES):
        raise ConfigError("model.loss", loss, "model.head=softmax predicts one class per example: use "
                          "model.loss=sparse_categorical_crossentropy (class ids) or categorical_crossentropy (one-hot), "
                          "or model.head=linear for values, model.head=sigmoid for multi-label targets.")
    if head == ModelHead.sigmoid and loss not in MULTI_LABEL_LOSSES:
        raise ConfigError("model.loss", loss, "model.head=sigmoid gives an independent probability per label: use "
                          "model.loss=binary_crossentropy, or model.head=softmax for one class per example.")
    if prediction_kind(cfg) == PredictionKind.regression:
        wrong = [str(x) for x in m.metrics if str(x) in ACCURACY_METRICS]
        if wrong:
            raise ConfigError("model.metrics", [str(x) for x in m.metrics],
                              f"{wrong[0]!r} counts right classes, which a regression model does not predict: use "
                              "value metrics, e.g. model.metrics=[mae].")
    if head == ModelHead.linear and cfg.data.name in CLASS_DATA:
        raise ConfigError("model.head", str(head), f"data={cfg.data.name} has class labels, not values to regress: use "
                          "model.head=softmax, or data with numeric targets, e.g. experiment=diabetes_regression.")
    if head == ModelHead.sigmoid and cfg.data.name in CLASS_DATA:
        raise ConfigError("model.head", str(head), f"data={cfg.data.name} has one class id per example, while "
                          "model.head=sigmoid (multi-label) needs multi-hot label rows: use model.head=softmax, or "
                          "data=files with a 2-D label array.")
    if head in (ModelHead.softmax, ModelHead.sigmoid) and cfg.data.name in VALUE_DATA:
        raise ConfigError("model.head", str(head), f"data={cfg.data.name} has numeric targets, not classes: use "
                          "model.head=linear with model.loss=mse (experiment=diabetes_regression sets both).")
    _check_export(cfg)
    q = cfg.quantization
    values = prediction_kind(cfg) == PredictionKind.regression
    if values and q.max_accuracy_drop is not None:
        raise ConfigError("quantization.max_accuracy_drop", q.max_accuracy_drop, "A regression model has no accuracy: "
                          "gate its error instead, e.g. quantization.max_mae_increase=1.0 (in the targets' units).")
    if q.max_mae_increase is not None:
        if not values:
            raise ConfigError("quantization.max_mae_increase", q.max_mae_increase, "It gates regression models "
                              "(model.head=linear); for a classifier use quantization.max_accuracy_drop.")
        if q.max_mae_increase < 0:
            raise ConfigError("quantization.max_mae_increase", q.max_mae_increase, "Use the mean absolute error the "
                              "converted model may add, >= 0 (in the targets' units), or null for no gate.")


def _check_export(cfg: ExperimentConfig) -> None:
    e, head = cfg.export, cfg.model.head
    signatures = [str(s) for s in e.signatures]
    _duplicates("export.signatures", signatures)
    _duplicates("export.outputs", [str(o) for o in e.outputs])
    if SignatureKind.serving_default not in signatures:
        raise ConfigError("export.signatures", signatures, "Keep serving_default (predict requests without a "
                          "signature_name, quantization and the deploy smoke test use it), e.g. "
                          "export.signatures=[serving_default,classification].")
    if e.output_name in [str(o) for o in e.outputs]:
        raise ConfigError("export.output_name", e.output_name, "An extra output of export.outputs has this name: "
                          "rename the model's output, e.g. export.output_name=probabilities.")
    kind = prediction_kind(cfg)
    if ExtraOutput.classes in e.outputs and kind == PredictionKind.regression:
        raise ConfigError("export.outputs", [str(o) for o in e.outputs], "classes needs a classifier; a regression "
                          "model's output is its values: export.outputs=[].")
    if SignatureKind.classification in signatures and kind == PredictionKind.regression:
        raise ConfigError("export.signatures", signatures, "classification needs a classifier (model.head=softmax or "
                          "sigmoid); a regression model gets regression: export.signatures=[serving_default,regression].")
    if SignatureKind.regression in signatures and kind != PredictionKind.regression:
        raise ConfigError("export.signatures", signatures, f"regression needs a model that predicts values "
                          f"(model.head=linear), not model.head={head}: use "
                          "export.signatures=[serving_default,classification].")
