"""The MPS line a study logs (cluster/mps.py): said when this machine's GPUs are shared by trials
without a control daemon, not said otherwise. A daemon is found by its control pipe, where CUDA
itself looks (``CUDA_MPS_PIPE_DIRECTORY``, else /tmp/nvidia-mps)."""

from __future__ import annotations

from pathlib import Path

from cluster.mps import running, sharing_note


def test_sixteen_trials_on_a_local_gpu_without_mps_are_told_how_to_start_it(tmp_path: Path):
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)}  # an empty pipe folder: no daemon
    note = sharing_note(0.0625, cluster_gpus=1, local=True, environ=env)
    assert note is not None and "the 16 trials sharing each GPU time-slice it" in note
    assert note.endswith("nvidia-cuda-mps-control -d")


def test_no_line_under_mps_nor_where_nothing_is_shared_or_the_nodes_are_not_ours(tmp_path: Path):
    (tmp_path / "control").touch()  # the control daemon's pipe
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)}
    assert running(env)
    assert sharing_note(0.0625, cluster_gpus=1, local=True, environ=env) is None
    empty = {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "none")}
    assert not running(empty)
    assert sharing_note(1.0, cluster_gpus=1, local=True, environ=empty) is None  # a GPU a trial
    assert sharing_note(0.0, cluster_gpus=0, local=True, environ=empty) is None  # a CPU machine
    assert sharing_note(0.25, cluster_gpus=4, local=False, environ=empty) is None  # ray job submit
