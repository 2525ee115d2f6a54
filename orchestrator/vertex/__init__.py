"""Vertex AI (AI Platform): training jobs, hyperparameter tuning jobs and endpoints from tfscale configs.

Modules: ``schema`` (config dataclasses), ``checks`` (validation), ``job_spec`` (CustomJob bodies, scale
tiers), ``tuning`` (HyperparameterTuningJob, trials into the study store), ``hypertune`` (trial metric
reports), ``packaging`` (sdist + staging), ``clients`` (SDK clients), ``jobs`` (submit, follow, dry run),
``models`` (Model Registry, endpoints, traffic, prediction). Only ``schema`` and ``checks`` are on the
config path; everything that needs the SDK imports it inside functions.
"""
