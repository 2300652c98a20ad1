"""The README's commands run as written (issue #21): a test walks them.

Every command line of the README's fenced shell blocks, and every inline code span holding a
``python -m`` command, is either run here (in README order: a later command reads what an earlier
one wrote) or allow-listed in ``NOT_RUN`` with the reason it cannot run in a test. A command the
README gains that is in neither list fails ``test_every_readme_command_is_run_or_allow_listed``,
and so does an entry whose command left the README: the lists cannot drift from the README.

A command runs as written, with ``python`` this interpreter, in a fresh folder (its relative
``--out`` paths land there) and with the results, MLflow store, token cache and source adapters
in that folder through the variables the README names (``PEFT_TUNE_RESULTS``,
``PEFT_TUNE_CACHE_DIR``, ``PEFT_TUNE_ADAPTERS``). Where a command as written would run a study
for hours or wait for a GPU, ``RUN`` appends the words that make it cheap, each with its reason:
``--preset smoke`` (the same study on a tiny random BERT; for ``tuner.train`` the same backbone
and sizes as flags) or ``--dry-run`` (parsed, built and its first configurations counted; nothing
trained).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

SMOKE = ("--preset", "smoke")  # the full study as written takes hours
DRY = ("--dry-run",)  # as written it waits for a GPU (or runs the 17-minute demo)
# tuner.train has no --preset: the smoke preset's backbone, sample and training (tuner/experiments/
# _presets.py) as flags, appended (the last of a repeated flag wins; --set adds its pairs); as
# written, 1.5 CPU minutes (2,000 samples) to hours (all of SST-2)
TRAIN_SMOKE = ("--backbone", "tiny-bert", "--train-samples", "256", "--epochs", "1",
               "--set", "evals=2", "batch_size=32", "max_length=64")  # fmt: skip

# command as the README writes it (comment dropped) -> words appended to run it here
RUN: dict[str, tuple[str, ...]] = {
    "python -m tuner.run --list": (),
    "python -m tuner.run e4_budget --dry-run": (),
    "python -m tuner.run e4_budget --preset smoke": (),
    "python -m tuner.run e1_single_task --set task=imdb sources=glue/sst2,newsgroups/bydate --gpus-per-trial 0.0625": DRY,
    "python -m tuner.run e4_budget --resume": SMOKE,  # finishes the smoke study above
    "python -m tuner.run e4_budget --overwrite": SMOKE,  # runs the smoke study again in its folder
    "python -m tuner.run placement --fuse 8": DRY,  # one fused model holds a GPU (CPU smoke: 2.5 min)
    # pools only on GPUs (tests/test_multi_gpu.py runs it on two declared GPUs)
    "python -m tuner.run e4_budget --set method=lora": DRY,
    "python -m tuner.train --task glue/sst2 --method lora --set rank=8 --train-samples 2000": TRAIN_SMOKE,
    "python -m tuner.train --task glue/sst2 --method lora --fuse lr=5e-4,1e-3,2e-3": TRAIN_SMOKE,
    "python -m tuner.params --backbone minilm-l6 --method pfeiffer --set bottleneck=24 --verify": (),
    "python -m tuner.params --method lora --set rank=8 placement=attn_qv": (),
    "python -m tuner.params --table": (),
    "python -m tuner.data list": (),
    "python -m tuner.data describe tweet_eval/sentiment": (),
    "python -m search_spaces.spaces --demo": (),
    "python -m analysis.report e4_budget --out reports/e4": (),  # the smoke study's report
    "python -m tuner.run e4_budget --preset demo": DRY,  # 17 CPU minutes; CI's drift step runs it
    "python -m tuner.bench --suite search --study asha=DIR --study fifo=DIR --gpus 1": (),
    "python -m tuner.train --trial DIR/trial_ID": (),  # a trial of the smoke study
}  # fmt: skip
# ``NAME=DIR`` in the README stands for a study's results folder: here, the smoke study's;
# ``DIR/trial_ID`` for one of its trials' folders
STUDY_DIR = "results/e4_budget-smoke"

# command -> why a test cannot run it
NOT_RUN: dict[str, str] = {
    "bash .ci/demo": "installs the venv, then the 17-minute demo (its --dry-run is run above)",
    "bash .ci/test": "installs the venv, then the whole test suite, this test included",
    "python3 -m venv .venv && . .venv/bin/activate": "installation",
    "pip install torch --index-url https://download.pytorch.org/whl/cpu": "installation (network)",
    "pip install .": "installation (network)",
    "export PEFT_TUNE_DATA_DIR=../shared/data HF_HUB_OFFLINE=1": "the test sets its own environment",
    "python -m tuner.bench --suite trial --device cuda": "needs a CUDA device",
    "python -m tuner.bench --suite packing --via tune --mps yes --train-samples 32000": "GPU packing benchmark (MPS)",
    "python -m tuner.bench --suite packing --via fused --train-samples 32000": "GPU packing benchmark: 1..16 trials on 32,000 samples",
    "python -m tuner.bench --suite packing --via pool --train-samples 32000": "GPU packing benchmark: 1..16 trials on 32,000 samples",
    "python -m cluster.bundle --requirement . --host-freeze host-freeze.txt --part-size 56M --out bundle": "pip downloads wheels (network) against a GPU host's pip freeze",
    "mlflow ui --backend-store-uri sqlite:///$HOME/peft-tune-results/mlflow.db": "a server that runs until stopped",
    "python -m analysis.report glue_methods": "needs the glue_methods family's studies (GPU hours)",
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m tuner.run e4_budget": "needs a Ray cluster's job server",
}  # fmt: skip


def readme_commands(text: str) -> list[str]:
    """The README's commands in order: each line of a ``bash`` block (its comment dropped), then
    each inline code span holding ``python -m`` (whitespace collapsed: a span may wrap)."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                commands.append(command)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        command = " ".join(span.split())
        if "python -m " in command and command not in commands:
            commands.append(command)
    return commands


def test_every_readme_command_is_run_or_allow_listed():
    commands = readme_commands(README.read_text())
    known = {*RUN, *NOT_RUN}
    unknown = [c for c in commands if c not in known]
    assert not unknown, (
        f"README commands neither run nor allow-listed in {Path(__file__).name}: {unknown}"
    )
    gone = sorted(known - set(commands))
    assert not gone, f"listed here but no longer in the README: {gone}"


def argv(command: str, appended: tuple[str, ...], *, root: Path) -> list[str]:
    trial = next((root / STUDY_DIR).glob("trial_*"), None)  # the smoke study ran by then
    words = [str(trial) if w == "DIR/trial_ID" else re.sub(r"=DIR$", f"={STUDY_DIR}", w)
             for w in shlex.split(command)]  # fmt: skip
    assert words[0] == "python", command
    return [sys.executable, *words[1:], *appended]


@pytest.mark.slow
def test_the_readme_commands_run(tmp_path, data_dir):
    env = {
        k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"
    }  # a local Ray, not a shared one
    env.update(PYTHONPATH=str(ROOT), PEFT_TUNE_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PEFT_TUNE_RESULTS=str(tmp_path / "results"),
               PEFT_TUNE_CACHE_DIR=str(tmp_path / "tokens"),
               PEFT_TUNE_ADAPTERS=str(tmp_path / "adapters"))  # fmt: skip
    failures, times = [], []
    for command in readme_commands(README.read_text()):
        if command not in RUN:
            continue
        started = time.time()
        proc = subprocess.run(argv(command, RUN[command], root=tmp_path), cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        times.append(f"{time.time() - started:5.0f} s  {command}")
        if proc.returncode != 0:
            failures.append(f"{command} -> exit {proc.returncode}\n{proc.stderr[-2000:]}")
    print("\n".join(times))
    assert not failures, "\n\n".join(failures)
    assert (tmp_path / "reports" / "e4" / "report.md").is_file()
