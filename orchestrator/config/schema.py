"""Typed schemas of every config group.

Each group of ``conf/`` has one dataclass here; every option YAML of that group is merged into it, so an
unknown key or a wrongly typed value fails at compose time. This module must stay importable without
TensorFlow, Ray or the Vertex SDK: ``tfscale --help``, ``--cfg job`` and every config error go through it.

Every closed choice (a strategy, a quantization mode, a backend, ...) is a :class:`Choice` enum, so a value
outside it fails at composition with the list of valid ones, while YAML, overrides, comparisons with plain
strings and everything written out (``--cfg job``, the run record, JSON) keep the plain value.

The root :class:`ExperimentConfig` is stored as ``tfscale_schema`` and is the first entry of
``conf/config.yaml``'s defaults list.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from orchestrator.config.vertex import VertexConfig, VertexDeployConfig

from orchestrator.config.serving import ServingConfig, TfServingDeployConfig


# ------------------------------------------------------------------------------------------ choices
class Choice(str, Enum):
    """A closed set of config values. A member's value is its name (``enum.auto()``), because OmegaConf looks a
    YAML string up by member name; being a ``str``, a member equals, hashes, prints and JSON-encodes as its value."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: List[str]) -> str:
        return name

    def __str__(self) -> str:  # Python 3.11 would print "StrategyName.mirrored" for a str mixin
        return str.__str__(self)

    def __repr__(self) -> str:  # error messages show the value as the user wrote it: 'mirrored'
        return str.__repr__(self)

    @classmethod
    def values(cls) -> List[str]:
        """The valid values, in declaration order (for messages)."""
        return [m.value for m in cls]


class DataName(Choice):
    """``data.name``: the loader of the examples."""

    digits = enum.auto()
    mnist = enum.auto()
    fashion_mnist = enum.auto()
    cifar10 = enum.auto()
    files = enum.auto()
    diabetes = enum.auto()  # scikit-learn's bundled diabetes regression data (442 rows, 10 features)
    tfrecord = enum.auto()  # sharded TFRecord files, streamed (orchestrator.training.streaming)
    csv_shards = enum.auto()  # sharded CSV files with a header line, streamed


class DataFormat(Choice):
    """``data.format`` of ``data=files``; ``auto`` infers it from the file's suffix."""

    auto = enum.auto()
    npz = enum.auto()
    csv = enum.auto()
    tfrecord = enum.auto()


class ShardPolicy(Choice):
    """``data.shard_policy`` of a streamed source: how input pipelines (workers) split the training files."""

    auto = enum.auto()  # file when there are at least as many files as input pipelines, else data
    file = enum.auto()  # each pipeline reads its own files
    data = enum.auto()  # each pipeline reads every file and keeps every n-th record


class OptimizerName(Choice):
    """``model.optimizer.name``."""

    adam = enum.auto()
    adamw = enum.auto()
    sgd = enum.auto()
    rmsprop = enum.auto()
    adagrad = enum.auto()


class ModelHead(Choice):
    """``model.head``: the output layer tfscale puts after the declared layers (or the builder's model)."""

    softmax = enum.auto()  # one class per example: probabilities over num_classes
    sigmoid = enum.auto()  # multi-label: an independent probability per label (multi-hot targets)
    linear = enum.auto()  # regression: raw values in the targets' units
    none = enum.auto()  # the last declared layer (or the builder's model) is the output


class SignatureKind(Choice):
    """``export.signatures``: the SavedModel signatures a published version carries.

    ``classification`` and ``regression`` take serialized ``tf.Example`` strings (TF Serving's Classify and
    Regress APIs, method names ``tensorflow/serving/classify`` / ``.../regress``).
    """

    serving_default = enum.auto()
    classification = enum.auto()
    regression = enum.auto()


class ExtraOutput(Choice):
    """``export.outputs``: outputs ``serving_default`` adds to the model's own."""

    classes = enum.auto()  # softmax / none: the argmax class id; sigmoid: the multi-hot labels over 0.5


class OnMissingGpu(Choice):
    """``topology.on_missing_gpu``: refuse the run, or run on the CPU and say so."""

    error = enum.auto()
    cpu_fallback = enum.auto()


class StrategyName(Choice):
    """``strategy.name``: one of the strategies of :mod:`strategies` (a test keeps the two lists equal)."""

    default = enum.auto()
    one_device = enum.auto()
    mirrored = enum.auto()
    central_storage = enum.auto()
    multi_worker_mirrored = enum.auto()
    parameter_server = enum.auto()
    tpu = enum.auto()


class CrossDeviceOps(Choice):
    """``strategy.cross_device_ops`` of mirrored: how gradients are all-reduced across devices."""

    auto = enum.auto()
    nccl = enum.auto()
    hierarchical_copy = enum.auto()
    reduce_to_one_device = enum.auto()


class Communication(Choice):
    """``strategy.communication`` of multi_worker_mirrored: the collective implementation."""

    auto = enum.auto()
    ring = enum.auto()
    nccl = enum.auto()


class MixedPrecision(Choice):
    """``trainer.mixed_precision``: the tf_keras dtype policy."""

    none = enum.auto()
    mixed_float16 = enum.auto()
    mixed_bfloat16 = enum.auto()


class BackendName(Choice):
    """``backend.name``: where the tasks run (see :mod:`orchestrator.config.registry`)."""

    local = enum.auto()
    processes = enum.auto()
    ray = enum.auto()
    vertex = enum.auto()


class PlacementStrategy(Choice):
    """``backend.placement_strategy`` of ray: Ray's placement group strategies."""

    PACK = enum.auto()
    SPREAD = enum.auto()
    STRICT_SPREAD = enum.auto()
    STRICT_PACK = enum.auto()


class QuantizationMode(Choice):
    """``quantization.mode``: the TFLite conversion of the trained model."""

    none = enum.auto()
    dynamic = enum.auto()
    float16 = enum.auto()
    int8 = enum.auto()
    qat = enum.auto()


class QuantizationSplit(Choice):
    """``quantization.evaluation_split``: the split the converted model's accuracy is measured on."""

    test = enum.auto()
    validation = enum.auto()  # in a study whose objectives read it: the test split stays unseen by the search


class TfjsQuantize(Choice):
    """``deploy.tfjs.quantize``: weight compression of the TF.js graph model."""

    none = enum.auto()
    float16 = enum.auto()
    uint8 = enum.auto()
    uint16 = enum.auto()


class DeployTarget(Choice):
    """``deploy.target``: what happens to a published version."""

    none = enum.auto()
    vertex = enum.auto()
    tf_serving = enum.auto()
    tfjs = enum.auto()


# --------------------------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    """Where examples come from and how they are split and batched.

    ``name`` picks the loader: ``digits`` (scikit-learn's bundled 8x8 digits, offline), ``diabetes``
    (scikit-learn's bundled regression data, offline; float targets for ``model.head=linear``), ``mnist``,
    ``fashion_mnist``, ``cifar10`` (tf_keras datasets, read from ``cache_dir``) or ``files``
    (``path`` to an .npz, .csv or TFRecord file, local or ``gs://``): all loaded into memory. ``tfrecord``
    and ``csv_shards`` stream sharded files (``train``/``validation``/``test`` patterns) through tf.data
    instead; see ``orchestrator.config.streams``.
    """

    name: DataName = DataName.digits
    path: Optional[str] = None
    format: DataFormat = DataFormat.auto
    features_key: str = "x"  # npz array / TFRecord feature holding the inputs
    label_key: str = "y"  # npz array / TFRecord feature / CSV column holding the labels
    feature_shape: Optional[List[int]] = None  # TFRecord only: shape of one example's features
    image_shape: Optional[List[int]] = None  # HWC view of one example, used by image models
    num_classes: Optional[int] = None  # inferred from the labels when null
    scale: Optional[float] = None  # raw inputs are divided by this inside the model; null = dataset default
    cache_dir: Optional[str] = None  # tf_keras datasets cache; null = ~/.keras/datasets
    validation_split: float = 0.1
    test_split: float = 0.2
    shuffle_seed: int = 0
    shuffle_buffer: int = 10000
    prefetch: int = -1  # -1 = tf.data.AUTOTUNE
    limit: Optional[int] = None  # use only the first N examples (quick experiments)
    # Streamed sources (tfrecord, csv_shards) only:
    spec: Optional[str] = None  # spec.json of `tfscale data convert` (or its directory): patterns, features, counts
    train: Optional[str] = None  # file pattern (glob or gs://... URI) of the training shards
    validation: Optional[str] = None
    test: Optional[str] = None  # null = evaluate on the validation files
    features: Dict[str, Any] = field(default_factory=dict)  # {name: {shape: [..], dtype: float32|int64}}; {} = features_key + feature_shape
    train_records: Optional[int] = None  # null = counted once (cached beside the run records)
    shard_policy: ShardPolicy = ShardPolicy.auto
    adapt_batches: int = 10  # the model's rescaling adapts on this many first batches (when data.scale is null)
    read_parallelism: int = -1  # files read at once per pipeline (-1 = all of its files, at most 16)
    profile_batches: int = 20  # batches of the input pipeline timed alone for the run record's input share (0 = off)


# -------------------------------------------------------------------------------------------- model
@dataclass
class OptimizerConfig:
    """Optimizer by name with its hyperparameters."""

    name: OptimizerName = OptimizerName.adam
    learning_rate: float = 1e-3
    momentum: float = 0.0  # sgd / rmsprop
    nesterov: bool = False
    weight_decay: Optional[float] = None
    clipnorm: Optional[float] = None


@dataclass
class ModelConfig:
    """A model declared as a layer list (each layer a ``_target_`` to a tf_keras layer) or a builder.

    The exported model always takes raw inputs: tfscale puts an input layer named ``export.input_name``
    and the dataset's rescaling in front of ``layers`` and the ``head`` named ``export.output_name`` after
    them: ``softmax`` (classes), ``sigmoid`` (multi-label), ``linear`` (regression, in the targets' units) or
    ``none`` (the last layer, or the builder's model, is the output). The loss and metrics must suit the head.
    """

    name: str = "mlp"
    layers: List[Any] = field(default_factory=list)
    head: ModelHead = ModelHead.softmax
    builder: Optional[str] = None  # "package.module:function"(input_shape, num_classes, **builder_kwargs)
    builder_kwargs: Dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: str = "sparse_categorical_crossentropy"
    metrics: List[str] = field(default_factory=lambda: ["accuracy"])
    # Where a layer's ``_target_`` (nested ones included) and ``builder`` may come from: dotted module
    # prefixes, checked before anything is imported. The package of a ``-cd`` config directory is allowed too.
    allowed_modules: List[str] = field(default_factory=lambda: ["tf_keras"])
    allow_any_target: bool = False  # true: import and call any _target_ / builder (the config is trusted code)


# ----------------------------------------------------------------------------------------- topology
@dataclass
class TopologyConfig:
    """Device topology of one task process, applied before TensorFlow initialises.

    ``cpu_devices`` > 1 splits the CPU into logical devices (multi-replica strategies without a GPU).
    ``gpus`` becomes ``CUDA_VISIBLE_DEVICES`` (null: leave as is; []: hide every GPU).
    ``virtual_gpus`` > 1 splits each visible GPU into that many logical GPUs of ``gpu_memory_limit_mb``.
    A memory limit (virtual GPUs included) takes precedence over ``gpu_memory_growth``: TensorFlow allows one.
    ``on_missing_gpu``: ``error`` (default) or ``cpu_fallback`` — an explicit, logged fallback.
    """

    name: str = "auto"
    cpu_devices: int = 1
    gpus: Optional[List[int]] = None
    gpu_memory_growth: bool = False
    gpu_memory_limit_mb: Optional[int] = None
    virtual_gpus: int = 1
    on_missing_gpu: OnMissingGpu = OnMissingGpu.error
    soft_device_placement: bool = True
    inter_op_threads: int = 0  # 0 = TensorFlow's choice
    intra_op_threads: int = 0


# ----------------------------------------------------------------------------------------- strategy
@dataclass
class StrategyConfig:
    """A tf.distribute strategy and its settings (only the ones relevant to ``name`` are read)."""

    name: StrategyName = StrategyName.default
    device: Optional[str] = None  # one_device: e.g. "/cpu:0"; null = first GPU, else CPU
    devices: Optional[List[str]] = None  # mirrored / central_storage compute devices; null = all
    cross_device_ops: CrossDeviceOps = CrossDeviceOps.auto  # mirrored
    parameter_device: Optional[str] = None  # central_storage: null = CPU
    communication: Communication = Communication.auto  # multi_worker_mirrored
    num_shards: int = 0  # parameter_server: fixed shard count (0 = off)
    min_shard_bytes: int = 0  # parameter_server: MinSizePartitioner (0 = off)
    max_shards: int = 0  # parameter_server: cap for min_shard_bytes partitioning (0 = number of ps)
    steps_per_execution: int = 1
    tpu: Optional[str] = None  # tpu: TPUClusterResolver tpu= (name or grpc:// address; "local")
    tpu_zone: Optional[str] = None
    tpu_project: Optional[str] = None


# ------------------------------------------------------------------------------------------ trainer
@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "val_loss"
    patience: int = 3
    min_delta: float = 0.0
    restore_best_weights: bool = True


@dataclass
class TrainerConfig:
    """How the model is fitted. ``batch_size`` is the global batch (split across replicas)."""

    epochs: int = 20
    batch_size: int = 32
    steps_per_epoch: Optional[int] = None  # required by parameter_server; null = one pass over the data
    seed: int = 0
    deterministic: bool = False  # TensorFlow op determinism (slower, bit-identical reruns)
    mixed_precision: MixedPrecision = MixedPrecision.none
    tensorboard: bool = True
    checkpoints: bool = False  # save weights each epoch under <run_dir>/checkpoints
    backup_and_restore: bool = False  # resume an interrupted fit from <run_dir>/backup
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    verbose: int = 2  # Keras progress: 0 silent, 1 bar, 2 one line per epoch
    # Before fit: layer arguments, a forward pass, the serving signature and (when configured) the TFLite /
    # TF.js conversion of the untrained model, so config mistakes fail in seconds (orchestrator.training.preflight).
    preflight: bool = True


# ------------------------------------------------------------------------------------------- export
@dataclass
class ExportConfig:
    """Where the SavedModel version is published: ``<model_base>/<model_name>/<NNNN>``, and its signatures.

    ``serving_default`` has exactly the model's outputs, as a model exported by Keras itself (one output: TF
    Serving answers ``predictions`` as a batch of arrays); ``outputs`` adds more to it (``[classes]``).
    ``signatures`` may add ``classification`` / ``regression`` for TF Serving's Classify and Regress APIs;
    their input is ``inputs`` (serialized tf.Example strings whose feature ``input_name`` holds the raw row).
    """

    enabled: bool = True
    model_base: str = "models"
    model_name: str = "${data.name}_${model.name}"
    input_name: str = "features"
    output_name: str = "probabilities"
    outputs: List[ExtraOutput] = field(default_factory=list)
    signatures: List[SignatureKind] = field(default_factory=lambda: [SignatureKind.serving_default])


# ------------------------------------------------------------------------------------------ backend
@dataclass
class RayRuntimeEnvConfig:
    """``backend.runtime_env`` of ray on a cluster tfscale did not start: what Ray sets up on its nodes.

    Nodes need neither tfscale nor a copy of the experiment: the project's packages travel with the job.
    """

    py_modules: bool = True  # ship orchestrator, strategies, tuners and conf with the job (Ray py_modules)
    pip: List[str] = field(default_factory=list)  # requirements Ray pip-installs on each node, e.g. ["tensorflow==2.21.*"]
    env_vars: Dict[str, str] = field(default_factory=dict)  # set in every task; never put secrets here


@dataclass
class BackendConfig:
    """Where the tasks of a run execute: ``local`` | ``processes`` | ``ray`` | ``vertex``."""

    name: BackendName = BackendName.local
    max_restarts: int = 0  # processes / ray: restarts of the job's tasks after one died (needs trainer.backup_and_restore)
    start_timeout_s: float = 120.0  # ray: how long actors / a placement group may take to be scheduled
    stop_timeout_s: float = 10.0  # processes / ray: SIGTERM → SIGKILL grace when tasks are stopped
    evaluator_grace_s: float = 120.0  # how long the evaluator may keep evaluating after the chief finished
    stream_logs: bool = True  # processes / ray: echo task output with a "[worker:1] " prefix
    ray_address: Optional[str] = None  # ray: null = start a local Ray; "auto"; "host:port"; "ray://host:port"
    ray_num_cpus: Optional[int] = None  # ray, local Ray only: CPUs it offers (null = max(cores, CPUs the roles ask))
    placement_strategy: Optional[PlacementStrategy] = None  # ray: null = no placement group
    runtime_env: RayRuntimeEnvConfig = field(default_factory=RayRuntimeEnvConfig)  # ray, existing cluster only


# ------------------------------------------------------------------------------------------ cluster
@dataclass
class RoleConfig:
    """Tasks of one role: how many (or explicit ``hosts``), the resources each asks for, and its topology."""

    count: int = 0
    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: Optional[int] = None
    topology: Dict[str, Any] = field(default_factory=dict)  # overrides of the topology group for this role
    hosts: Optional[List[str]] = None  # explicit host:port list instead of a count


@dataclass
class ClusterConfig:
    """A TensorFlow cluster: roles with counts/resources, or an explicit TF_CONFIG-style ``spec``.

    ``spec`` accepts TensorFlow's plain dict form as is: ``{"worker": ["a:2222", "b:2222"], "ps": ["a:2221"]}``
    (port 0 = a free port chosen at launch). The evaluator is never part of ``spec``: declare it with
    ``evaluator.count: 1``. ``host`` is the address tasks launched on this machine bind.
    """

    name: str = "none"
    chief: RoleConfig = field(default_factory=RoleConfig)
    worker: RoleConfig = field(default_factory=RoleConfig)
    ps: RoleConfig = field(default_factory=RoleConfig)
    evaluator: RoleConfig = field(default_factory=RoleConfig)
    spec: Dict[str, List[str]] = field(default_factory=dict)  # empty = use the role counts
    host: str = "127.0.0.1"


# ------------------------------------------------------------------------------------- quantization
@dataclass
class QuantizationConfig:
    """TFLite conversion of the trained model: none | dynamic | float16 | int8 | qat.

    The converted file is published as ``<model_base>/<model_name>/<NNNN>.<mode>.tflite`` beside the
    SavedModel version (see ``orchestrator.artifacts.quantization``). ``qat`` trains the wrapped model for
    ``trainer.epochs``.
    """

    mode: QuantizationMode = QuantizationMode.none
    calibration_batches: int = 100  # int8 / qat: representative batches drawn from the training split
    calibration_batch_size: int = 1
    int8_io: bool = False  # int8 / qat: integer input/output tensors instead of float
    dense_per_channel: bool = False  # per-channel (vs per-tensor) scales for Dense kernels: larger file
    evaluation_split: QuantizationSplit = QuantizationSplit.test  # where the report's accuracy and latency are measured
    max_accuracy_drop: Optional[float] = None  # gate: accuracy (0..1 scale) the converted model may lose; null = none
    max_mae_increase: Optional[float] = None  # gate of model.head=linear: mean absolute error (targets' units) it may add


# ------------------------------------------------------------------------------------------- deploy
@dataclass
class TfjsDeployConfig:
    """``deploy=tfjs``: a TF.js graph model made by an external ``tensorflowjs_converter``.

    tensorflowjs pins an older TensorFlow, so the converter lives in its own environment and is named
    here (a command on PATH or a path; ``~`` is expanded). The output is published atomically as
    ``<output_base>/<model_name>/<NNNN>/`` (model.json + weight shards), with the SavedModel's version number.
    """

    converter: str = "tensorflowjs_converter"
    output_base: str = "web_models"  # apart from export.model_base, whose numbered directories a model server loads
    quantize: TfjsQuantize = TfjsQuantize.none  # weight compression
    weight_shard_size_bytes: int = 4194304
    extra_args: List[str] = field(default_factory=list)  # passed to the converter as is
    timeout_s: float = 600.0


@dataclass
class DeployConfig:
    """What happens to a published version: none | tf_serving | vertex | tfjs.

    Each target's settings are a typed sub-node named after the target; a target reads only its own.
    """

    target: DeployTarget = DeployTarget.none
    vertex: VertexDeployConfig = field(default_factory=VertexDeployConfig)
    tf_serving: TfServingDeployConfig = field(default_factory=TfServingDeployConfig)
    tfjs: TfjsDeployConfig = field(default_factory=TfjsDeployConfig)


@dataclass
class ExperimentMeta:
    """Free-form description of the experiment (written into the run record)."""

    name: str = "${data.name}_${model.name}"
    tags: List[str] = field(default_factory=list)
    notes: Optional[str] = None


# ------------------------------------------------------------------------------------------- root
@dataclass
class ExperimentConfig:
    """The whole experiment as composed from ``conf/``."""

    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    topology: TopologyConfig = MISSING
    strategy: StrategyConfig = MISSING
    trainer: TrainerConfig = MISSING
    export: ExportConfig = MISSING
    backend: BackendConfig = MISSING
    cluster: ClusterConfig = MISSING
    quantization: QuantizationConfig = MISSING
    deploy: DeployConfig = MISSING
    experiment: ExperimentMeta = field(default_factory=ExperimentMeta)
    # Groups added by optional subsystems (serving, vertex, study) are untyped here and typed by their
    # own option schemas.
    serving: ServingConfig = field(default_factory=ServingConfig)
    vertex: VertexConfig = field(default_factory=VertexConfig)
    study: Any = None
    runs_dir: str = "runs"


GROUP_SCHEMAS: Dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "topology": TopologyConfig,
    "strategy": StrategyConfig,
    "trainer": TrainerConfig,
    "export": ExportConfig,
    "backend": BackendConfig,
    "cluster": ClusterConfig,
    "quantization": QuantizationConfig,
    "deploy": DeployConfig,
}


def register_configs() -> None:
    """Store the root schema in Hydra's ConfigStore (idempotent).

    Every group option is merged into its field of :class:`ExperimentConfig`, so the group dataclasses
    above are the schemas of ``conf/<group>/*.yaml``.
    """
    ConfigStore.instance().store(name="tfscale_schema", node=ExperimentConfig)
