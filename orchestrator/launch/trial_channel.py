"""How a study's driver and one trial talk: files in the trial's job directory, behind one type.

The sweeper asks a trial to stop and reads what it measured; the launcher watches for the stop request and
gives the trial its environment; the trial appends to its run record and, if it wants, to its reported
metrics. Each of these goes through :class:`TrialChannel`, so the file names live here only.

Nothing assumes a process: the channel is a directory on a file system the driver sees (this machine, or
one shared with the Ray nodes that run trials).
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from orchestrator.artifacts.run_record import EPOCHS_FILE, RunRecord
from tuners.metrics import METRICS_ENV_VAR

log = logging.getLogger("tfscale.study")


@dataclass(frozen=True)
class TrialChannel:
    """The job directory ``dir`` of one sweep job, seen as the channel between driver and trial."""

    dir: Path

    #: The variable :func:`tuners.report_metric` reads in the trial to find its reported-metrics file.
    METRICS_ENV: ClassVar[str] = METRICS_ENV_VAR
    _STOP: ClassVar[str] = ".tfscale_stop"
    _REPORTED: ClassVar[str] = "reported_metrics.jsonl"
    _LOG: ClassVar[str] = "trial.log"

    @classmethod
    def of_job(cls, job_config: DictConfig) -> "TrialChannel":
        """The channel of the job whose composed sweep config is ``job_config``.

        Its directory is ``hydra.sweep.dir/hydra.sweep.subdir`` resolved the way Hydra's ``run_job`` resolves
        it: against the job's own config (``${hydra.job.num}``, ``${hydra:...}``), relative to this process's
        working directory.
        """
        from hydra.core.hydra_config import HydraConfig

        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(job_config)
        try:
            out = Path(str(OmegaConf.select(job_config, "hydra.sweep.dir"))) / str(
                OmegaConf.select(job_config, "hydra.sweep.subdir"))
        finally:
            if previous is not None:
                HydraConfig.instance().cfg = previous
        return cls(out.absolute())

    # -- the driver's side ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Make the directory a fresh job's: whatever an interrupted attempt left (a stop request included) goes."""
        if self.dir.exists() and any(self.dir.iterdir()):
            log.info("clearing %s, left by an interrupted attempt", self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def request_stop(self) -> None:
        """Ask the launcher running this job to stop it (early stopping)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / self._STOP).touch()

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`request_stop` was called for this directory."""
        return (self.dir / self._STOP).exists()

    def env(self) -> Dict[str, str]:
        """Environment variables the trial's process needs to report through this channel."""
        return {self.METRICS_ENV: str(self.reported_metrics_path)}

    # -- what the trial wrote ------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        """The job's combined stdout and stderr."""
        return self.dir / self._LOG

    @property
    def reported_metrics_path(self) -> Path:
        """Where :func:`tuners.report_metric` appends in the trial."""
        return self.dir / self._REPORTED

    def epochs(self) -> List[Dict[str, Any]]:
        """The per-epoch lines of the trial's run record so far (a half-written last line is skipped)."""
        try:
            lines = (self.dir / EPOCHS_FILE).read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def reported_metrics(self, tag: Optional[str] = None) -> List[Dict[str, Any]]:
        """The trial's ``report_metric`` records (only ``tag``'s if given), in the order written."""
        from tuners import read_reported_metrics

        return read_reported_metrics(self.reported_metrics_path, tag)

    def final_metrics(self) -> Optional[Dict[str, Any]]:
        """The trial's ``metrics.json``, or None when it wrote none (yet)."""
        try:
            metrics = RunRecord(self.dir).metrics()
        except ValueError:  # cut short: the trial was killed while writing it
            return None
        return metrics if isinstance(metrics, dict) else None

