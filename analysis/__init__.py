"""Analysis of peft-tune studies: data first (tables, fronts, verdicts), presentation on top.

Load a study (:func:`load_mlflow`, :func:`load_tune_folder`), then compute tables, Pareto fronts
and hypothesis verdicts as dataclasses and DataFrames. ``analysis.render`` (matplotlib) and
``analysis.markdown`` are thin layers over that data; ``python -m analysis.report`` writes both.
docs/ANALYSIS.md states the rules (which trials count, how configurations are chosen, the tests).
"""

from analysis.budget import HeatMapInfo, best_splits, budget_heatmap
from analysis.completeness import Completeness
from analysis.efficiency import efficiency_table
from analysis.hypotheses import Verdict, evaluate
from analysis.pareto import ParetoInfo, optuna_study, pareto_front
from analysis.tables import Table, few_shot_table, method_task_table, transfer_table
from analysis.trials import Study, load_mlflow, load_tune_folder

__all__ = [
    "Completeness", "HeatMapInfo", "ParetoInfo", "Study", "Table", "Verdict", "best_splits",
    "budget_heatmap", "efficiency_table", "evaluate", "few_shot_table", "load_mlflow",
    "load_tune_folder", "method_task_table", "optuna_study", "pareto_front", "transfer_table",
]  # fmt: skip
