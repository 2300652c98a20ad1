"""The report, back where the study lives: its folder as artifacts of the study's MLflow parent run.

A researcher opens the MLflow UI on the study's parent run and finds ``report/report.md`` and its
figures beside the trials. A store that cannot take them (unreachable, read-only) costs one line
on stderr, never the report itself, which is already written to ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from analysis.trials import Study

ARTIFACT_PATH = "report"


def attach_report(study: Study, out: Path) -> list[str]:
    """Log every file of ``out`` under ``report/`` of each of the study's parent runs; one line per
    run that could not take it (empty when all did, or when the study names no parent run)."""
    from mlflow.tracking import MlflowClient

    problems = []
    for uri, run_id in study.mlflow_runs:
        try:
            MlflowClient(uri).log_artifacts(run_id, str(out), artifact_path=ARTIFACT_PATH)
        except Exception as exc:  # any store error: the report on disk stands
            problems.append(f"report not attached to MLflow run {run_id} at {uri}: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")  # fmt: skip
    return problems


__all__ = ["ARTIFACT_PATH", "attach_report"]
