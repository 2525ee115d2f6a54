"""tfscale's study layer: a Vizier-style study model, search algorithms, early stopping, a resumable study
store, metric readers and result writers. Independent of Hydra and TensorFlow (both imported lazily).

Use from a Hydra Sweeper (or any driver)::

    from tuners import Study, StudySpec, read_tb_scalar, write_results, progress_line

    spec = StudySpec.from_dict(study_cfg)          # native dict (conf/study/*.yaml), AI Platform or Vertex
    study = Study(spec, store=sweep_dir)           # <sweep_dir>/study.db; resumes if it exists
    while not study.is_done:
        trials = study.suggest()                   # fills free parallel slots; interrupted trials first
        if not trials:
            ...                                    # wait for a running trial, then continue
        for trial in trials:
            overrides = base_overrides + trial.overrides()   # ["model.optimizer.learning_rate=0.01", ...]
            # launch with the launcher; per epoch, optionally:
            #     if study.add_measurement(trial.id, epoch, value): kill it, then study.stop(trial.id)
            # on success: study.complete(trial.id, objective, log_path=job_dir)
            #   (objective = the task's return value, or read_tb_scalar(job_dir, spec.metric.tag)[-1][1])
            # several metrics (spec.metrics): study.complete(trial.id, {tag: value, ...}); the result is
            #   study.pareto_trials (non-dominated completed trials) instead of study.best_trial
            # on error:   study.fail(trial.id, traceback_text, log_path=job_dir)  # may raise StudyFailedError
        print(progress_line(study))
    write_results(study, sweep_dir)                # study.html, .csv, .md, best_overrides.txt, plots, HParams

A relaunched sweep in the same directory with the same config continues the study: finished trials are
kept, trials that were running when the driver died are suggested again with the same ids and parameters.
A different config on the same directory raises :class:`StudyStoreError` listing the differences; a second
live driver on it raises :class:`StudyLockedError` naming the first one's host and pid. A warm start feeds
the completed trials of earlier studies to the designer:
``Study(spec, sweep_dir, prior_trials=load_prior_trials(spec, earlier_dir).trials)``.
"""

from tuners.algorithms import (
    DESIGNERS,
    Designer,
    GaussianProcessBandit,
    GridDesigner,
    NSGA2Designer,
    QuasiRandomDesigner,
    RandomDesigner,
    TPEDesigner,
    VizierDesigner,
    make_designer,
)
from tuners.early_stopping import (
    DecayCurveStoppingRule,
    MedianStoppingRule,
    NoStoppingRule,
    StopDecision,
    StoppingRule,
    make_stopping_rule,
)
from tuners.errors import (
    AlgorithmUnavailableError,
    StudyFailedError,
    StudyLockedError,
    StudySpecError,
    StudyStoreError,
    TunerError,
    WarmStartError,
)
from tuners.metrics import (
    METRICS_ENV_VAR,
    list_tb_tags,
    read_reported_metrics,
    read_tb_scalar,
    report_metric,
)
from tuners.pareto import pareto_front
from tuners.results import progress_line, write_results
from tuners.study import Study
from tuners.study_spec import (
    Algorithm,
    EarlyStoppingRule,
    EarlyStoppingSpec,
    Goal,
    Measurement,
    MetricSpec,
    ParameterSpec,
    ParameterType,
    ScaleType,
    StudySpec,
    Trial,
    TrialStatus,
)
from tuners.study_store import StudyStore
from tuners.warm_start import PriorStudy, load_prior_trials, search_space_differences

__all__ = [
    "DESIGNERS",
    "METRICS_ENV_VAR",
    "Algorithm",
    "AlgorithmUnavailableError",
    "DecayCurveStoppingRule",
    "Designer",
    "EarlyStoppingRule",
    "EarlyStoppingSpec",
    "GaussianProcessBandit",
    "Goal",
    "GridDesigner",
    "Measurement",
    "MedianStoppingRule",
    "MetricSpec",
    "NSGA2Designer",
    "NoStoppingRule",
    "ParameterSpec",
    "ParameterType",
    "PriorStudy",
    "QuasiRandomDesigner",
    "RandomDesigner",
    "ScaleType",
    "StopDecision",
    "StoppingRule",
    "Study",
    "StudyFailedError",
    "StudyLockedError",
    "StudySpec",
    "StudySpecError",
    "StudyStore",
    "StudyStoreError",
    "TPEDesigner",
    "Trial",
    "TrialStatus",
    "TunerError",
    "VizierDesigner",
    "WarmStartError",
    "list_tb_tags",
    "load_prior_trials",
    "make_designer",
    "make_stopping_rule",
    "pareto_front",
    "progress_line",
    "read_reported_metrics",
    "read_tb_scalar",
    "report_metric",
    "search_space_differences",
    "write_results",
]
