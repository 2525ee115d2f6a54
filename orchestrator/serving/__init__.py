"""Serving of the model repository: the ``deploy=tf_serving`` files and an embedded TF-Serving-compatible
server (REST + gRPC, version policies and labels, hot reload with graceful swap, batching, rollback).

Modules: ``schema`` (config dataclasses, no TensorFlow), ``repository`` (version directories and policies),
``config_files`` (models.config, batching and monitoring files, launch plan, Kubernetes manifest),
``manager`` (loading, routing, graceful swap), ``batching``, ``codec`` (REST formats and input checks),
``rest``, ``grpc_service``, ``server`` (:class:`~orchestrator.serving.server.EmbeddedServer`) and ``cli``
(``tfscale serve`` / ``tfscale rollback``). Importing this package imports no TensorFlow.
"""
