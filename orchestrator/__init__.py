"""tfscale's orchestrator: CLI, config schemas and validation, task process, backends, export, records.

Nothing here imports TensorFlow at module level: the config path (``tfscale --help``, ``--cfg job`` and
every config error) must answer without it. TensorFlow is imported in the task process only, through
:func:`orchestrator.runtime.tf_env.import_tensorflow`.
"""

__version__ = "0.1.0"
