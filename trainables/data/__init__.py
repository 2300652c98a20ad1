"""The data layer: task registry, loading, honest splits, few-shot samples, tokenisation cache."""

from trainables.data.encoded import Encoded
from trainables.data.loading import load_frames, read_folder, resolve_task, task_for_folder
from trainables.data.splits import (
    Splits,
    few_shot,
    reported_test,
    split_policy,
    stratified_order,
    task_splits,
)  # fmt: skip
from trainables.data.tasks import METRICS, TASKS, Task, get_task, register_task
from trainables.data.tokenize import cache_stats, encode, reset_cache_stats

__all__ = [
    "METRICS", "TASKS", "Encoded", "Splits", "Task", "cache_stats", "encode", "few_shot",
    "get_task", "load_frames", "read_folder", "register_task", "reported_test", "reset_cache_stats",
    "resolve_task", "split_policy", "stratified_order", "task_for_folder", "task_splits",
]  # fmt: skip
