"""TF Serving's config messages that ``tensorflow-serving-api`` does not ship.

``BatchingParameters`` (servables/tensorflow/session_bundle_config.proto), ``MonitoringConfig``
(config/monitoring_config.proto) and ``SSLConfig`` (config/ssl_config.proto) are needed to write and read
``--batching_parameters_file``, ``--monitoring_config_file`` and ``--ssl_config_file``. When the installed package has them they are used as is; otherwise the
same messages (same package, names, types and field numbers) are declared here in a private descriptor
pool, so the text files round-trip exactly as TF Serving would parse them.
"""
from __future__ import annotations

import functools
from typing import Any, Tuple


@functools.lru_cache(maxsize=1)
def _private_classes() -> Tuple[Any, Any, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tfscale/tensorflow_serving_config.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])

    def add(msg, name, number, ftype, type_name=None, label=F.LABEL_OPTIONAL):
        f = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name

    bp = fdp.message_type.add(name="BatchingParameters")
    for name, number in (("max_batch_size", 1), ("batch_timeout_micros", 2), ("max_enqueued_batches", 3),
                         ("num_batch_threads", 4)):
        add(bp, name, number, F.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    add(bp, "thread_pool_name", 5, F.TYPE_MESSAGE, ".google.protobuf.StringValue")
    add(bp, "allowed_batch_sizes", 6, F.TYPE_INT64, label=F.LABEL_REPEATED)
    add(bp, "pad_variable_length_inputs", 7, F.TYPE_BOOL)

    pc = fdp.message_type.add(name="PrometheusConfig")
    add(pc, "enable", 1, F.TYPE_BOOL)
    add(pc, "path", 2, F.TYPE_STRING)
    mc = fdp.message_type.add(name="MonitoringConfig")
    add(mc, "prometheus_config", 1, F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")
    ssl = fdp.message_type.add(name="SSLConfig")
    for name, number in (("server_key", 1), ("server_cert", 2), ("custom_ca", 3)):
        add(ssl, name, number, F.TYPE_STRING)
    add(ssl, "client_verify", 4, F.TYPE_BOOL)
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")),
            get(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")),
            get(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig")))


def batching_parameters_class() -> Any:
    """The ``tensorflow.serving.BatchingParameters`` message class."""
    try:
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        return _private_classes()[0]


def monitoring_config_class() -> Any:
    """The ``tensorflow.serving.MonitoringConfig`` message class."""
    try:
        from tensorflow_serving.config import monitoring_config_pb2

        return monitoring_config_pb2.MonitoringConfig
    except ImportError:
        return _private_classes()[1]


def ssl_config_class() -> Any:
    """The ``tensorflow.serving.SSLConfig`` message class (PEM texts of the gRPC server's TLS)."""
    try:
        from tensorflow_serving.config import ssl_config_pb2

        return ssl_config_pb2.SSLConfig
    except ImportError:
        return _private_classes()[2]
