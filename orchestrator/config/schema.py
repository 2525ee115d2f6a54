"""Typed schemas of every config group.

Each group of ``conf/`` has one dataclass here; every option YAML of that group is merged into it, so an
unknown key or a wrongly typed value fails at compose time. This module must stay importable without
TensorFlow, Ray or the Vertex SDK: ``tfscale --help``, ``--cfg job`` and every config error go through it.

The root :class:`ExperimentConfig` is stored as ``tfscale_schema`` and is the first entry of
``conf/config.yaml``'s defaults list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from orchestrator.config.vertex import VertexConfig, VertexDeployConfig

from orchestrator.config.serving import ServingConfig, TfServingDeployConfig


# --------------------------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    """Where examples come from and how they are split and batched.

    ``name`` picks the loader: ``digits`` (scikit-learn's bundled 8x8 digits, offline), ``mnist``,
    ``fashion_mnist``, ``cifar10`` (tf_keras datasets, read from ``cache_dir``) or ``files``
    (``path`` to an .npz, .csv or TFRecord file, local or ``gs://``).
    """

    name: str = "digits"
    path: Optional[str] = None
    format: str = "auto"  # auto | npz | csv | tfrecord
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


# -------------------------------------------------------------------------------------------- model
@dataclass
class OptimizerConfig:
    """Optimizer by name with its hyperparameters."""

    name: str = "adam"  # adam | sgd | rmsprop | adagrad | adamw
    learning_rate: float = 1e-3
    momentum: float = 0.0  # sgd / rmsprop
    nesterov: bool = False
    weight_decay: Optional[float] = None
    clipnorm: Optional[float] = None


@dataclass
class ModelConfig:
    """A model declared as a layer list (each layer a ``_target_`` to a tf_keras layer) or a builder.

    The exported model always takes raw inputs: tfscale puts an input layer named ``export.input_name``
    and the dataset's rescaling in front of ``layers`` and a softmax classification head of
    ``num_classes`` units named ``export.output_name`` after them.
    """

    name: str = "mlp"
    layers: List[Any] = field(default_factory=list)
    builder: Optional[str] = None  # "package.module:function"(input_shape, num_classes, **builder_kwargs)
    builder_kwargs: Dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: str = "sparse_categorical_crossentropy"
    metrics: List[str] = field(default_factory=lambda: ["accuracy"])


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
    on_missing_gpu: str = "error"
    soft_device_placement: bool = True
    inter_op_threads: int = 0  # 0 = TensorFlow's choice
    intra_op_threads: int = 0


# ----------------------------------------------------------------------------------------- strategy
@dataclass
class StrategyConfig:
    """A tf.distribute strategy and its settings (only the ones relevant to ``name`` are read)."""

    name: str = "default"  # default | one_device | mirrored | central_storage | multi_worker_mirrored | parameter_server | tpu
    device: Optional[str] = None  # one_device: e.g. "/cpu:0"; null = first GPU, else CPU
    devices: Optional[List[str]] = None  # mirrored / central_storage compute devices; null = all
    cross_device_ops: str = "auto"  # mirrored: auto | nccl | hierarchical_copy | reduce_to_one_device
    parameter_device: Optional[str] = None  # central_storage: null = CPU
    communication: str = "auto"  # multi_worker_mirrored: auto | ring | nccl
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
    mixed_precision: str = "none"  # none | mixed_float16 | mixed_bfloat16
    tensorboard: bool = True
    checkpoints: bool = False  # save weights each epoch under <run_dir>/checkpoints
    backup_and_restore: bool = False  # resume an interrupted fit from <run_dir>/backup
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    verbose: int = 2  # Keras progress: 0 silent, 1 bar, 2 one line per epoch


# ------------------------------------------------------------------------------------------- export
@dataclass
class ExportConfig:
    """Where the SavedModel version is published: ``<model_base>/<model_name>/<NNNN>``."""

    enabled: bool = True
    model_base: str = "models"
    model_name: str = "${data.name}_${model.name}"
    input_name: str = "features"
    output_name: str = "probabilities"


# ------------------------------------------------------------------------------------------ backend
@dataclass
class BackendConfig:
    """Where the tasks of a run execute: ``local`` | ``processes`` | ``ray`` | ``vertex``."""

    name: str = "local"
    max_restarts: int = 0  # processes / ray: restarts of the job's tasks after one died (needs trainer.backup_and_restore)
    start_timeout_s: float = 120.0  # ray: how long actors / a placement group may take to be scheduled
    stop_timeout_s: float = 10.0  # processes / ray: SIGTERM → SIGKILL grace when tasks are stopped
    evaluator_grace_s: float = 120.0  # how long the evaluator may keep evaluating after the chief finished
    stream_logs: bool = True  # processes / ray: echo task output with a "[worker:1] " prefix
    ray_address: Optional[str] = None  # ray: null = start a local Ray; "auto"; "host:port"; "ray://host:port"
    ray_num_cpus: Optional[int] = None  # ray, local Ray only: CPUs it offers (null = max(cores, CPUs the roles ask))
    placement_strategy: Optional[str] = None  # ray: PACK | SPREAD | STRICT_SPREAD | STRICT_PACK
    inject_fault: Optional[str] = None  # tests: "worker:1@2" SIGKILLs that task in epoch 2 of the first attempt


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

    mode: str = "none"
    calibration_batches: int = 100  # int8 / qat: representative batches drawn from the training split
    calibration_batch_size: int = 1
    int8_io: bool = False  # int8 / qat: integer input/output tensors instead of float
    dense_per_channel: bool = False  # per-channel (vs per-tensor) scales for Dense kernels: larger file
    max_accuracy_drop: Optional[float] = None  # gate: accuracy (0..1 scale) the converted model may lose; null = none


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
    quantize: str = "none"  # weight compression: none | float16 | uint8 | uint16
    weight_shard_size_bytes: int = 4194304
    extra_args: List[str] = field(default_factory=list)  # passed to the converter as is
    timeout_s: float = 600.0


@dataclass
class DeployConfig:
    """What happens to a published version: none | tf_serving | vertex | tfjs.

    Each target's settings are a typed sub-node named after the target; a target reads only its own.
    """

    target: str = "none"
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
