"""The source-adapter store never serves an adapter whose files changed, and no name escapes it.

A changed, added or missing file, an unreadable meta.json or one written for another spec makes
the entry fail its checksums: it is moved aside, the study retrains it, and a trial that meets an
entry changed after the study checked it refuses to load it. Names reach the file system only
hashed (store keys) or reduced to identifiers (adapter names).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from search_spaces.errors import ConfigError
from trainables.methods import source_adapter_name
from trainables.source_store import ADAPTER_DIR, META, AdapterStore, SourceSpec, check_intact

SPEC = SourceSpec(source="glue/sst2", backbone="tiny-bert", bottleneck=24)


def fake_adapter(folder: Path, payload: bytes = b"weights") -> Path:
    """An adapter folder as ``save_source_adapter`` leaves it (the store never reads inside)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"reduction_factor": 16}')
    (folder / "pytorch_adapter.safetensors").write_bytes(payload)
    return folder


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    store = AdapterStore(tmp_path / "store")
    store.put(SPEC, fake_adapter(tmp_path / "trained"), {"dev_score": 0.9})
    return store


def flip_a_byte(entry: Path) -> None:
    weights = entry / ADAPTER_DIR / "pytorch_adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[0] ^= 1
    weights.write_bytes(bytes(data))


TAMPERINGS = {
    "a weight byte flipped": flip_a_byte,
    "a file added": lambda e: (e / ADAPTER_DIR / "extra.safetensors").write_bytes(b"x"),
    "a file removed": lambda e: (e / ADAPTER_DIR / "adapter_config.json").unlink(),
    "meta.json unreadable": lambda e: (e / META).write_text("{not json"),
    "meta.json removed": lambda e: (e / META).unlink(),
    "meta.json of another spec": lambda e: (e / META).write_text(
        json.dumps({**json.loads((e / META).read_text()), "spec": {"source": "imdb"}})
    ),  # fmt: skip
}


def test_an_intact_entry_is_served(store: AdapterStore) -> None:
    assert store.get(SPEC) == store.entry(SPEC) / ADAPTER_DIR
    assert store.metrics(SPEC) == {"dev_score": 0.9}
    check_intact(store.entry(SPEC) / ADAPTER_DIR)


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_changed_entry_is_moved_aside_and_retrained(store, tamper, tmp_path: Path) -> None:
    entry = store.entry(SPEC)
    tamper(entry)
    assert store.get(SPEC) is None
    assert not entry.exists()
    (aside,) = store.quarantined
    assert aside.parent == store.root and aside.name.startswith(f"{entry.name}.corrupt-")
    # Retrained: the fresh copy is stored and served; a second failure moves aside again.
    store.put(SPEC, fake_adapter(tmp_path / "retrained", b"new weights"), {"dev_score": 0.8})
    assert store.get(SPEC) == entry / ADAPTER_DIR
    flip_a_byte(entry)
    assert store.get(SPEC) is None and len(store.quarantined) == 2


def test_a_trial_refuses_an_entry_changed_after_the_study_checked_it(store) -> None:
    folder = store.get(SPEC)
    flip_a_byte(store.entry(SPEC))
    with pytest.raises(ConfigError, match="no longer matches its checksums"):
        check_intact(folder)


def test_a_folder_outside_the_store_is_the_users_own(tmp_path: Path) -> None:
    check_intact(fake_adapter(tmp_path / "mine"))


def test_the_study_retrains_an_entry_that_failed_its_checksums(store, monkeypatch) -> None:
    """``ensure_source_adapters`` with Ray's task API replaced by a call in this process."""
    import ray

    import tuner.prepare
    import tuner.sources
    from tuner.experiments import get_experiment
    from tuner.sources import ensure_source_adapters, needed_specs

    exp = get_experiment("e4_budget").with_preset("smoke")
    exp = dataclasses.replace(exp, search=dataclasses.replace(exp.search, sources=("glue/sst2",)))
    (spec,) = needed_specs(exp, (24,), max_length=dict(exp.train)["max_length"])
    store.put(spec, fake_adapter(store.root.parent / "first"), {"dev_score": 0.5})
    flip_a_byte(store.entry(spec))
    trained = []

    def train(spec, data, root):
        trained.append(spec)
        AdapterStore(root).put(spec, fake_adapter(store.root.parent / "second", b"new"), {})
        return {"dev_score": 0.7}

    remote = SimpleNamespace(options=lambda **_: SimpleNamespace(remote=train))
    monkeypatch.setattr(ray, "remote", lambda fn: remote)
    monkeypatch.setattr(ray, "get", lambda value: value)
    monkeypatch.setattr(tuner.prepare, "prepare", lambda *a, **k: None)
    monkeypatch.setattr(tuner.sources, "_log_to_mlflow", lambda *a, **k: None)
    lines: list[str] = []
    out, work = ensure_source_adapters(exp, Prepared(),  bottlenecks=(24,), resources=SimpleNamespace(
        cpus_per_trial=1, gpus_per_trial=0), data_dir=None, tracking_uri="unused",
        log=lines.append, store=store)  # fmt: skip

    assert trained == [spec]
    assert any("failed its checksums" in line for line in lines), lines
    assert "0 reused, 1 to train" in "\n".join(lines)
    assert work == {"source_adapters_needed": 1, "source_adapters_trained": 1}
    folder = out.source_adapters[24]["glue/sst2"]
    assert folder == store.entry(spec) / ADAPTER_DIR
    assert (folder / "pytorch_adapter.safetensors").read_bytes() == b"new"


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What ensure_source_adapters reads of PreparedData."""

    source_adapters: dict = dataclasses.field(default_factory=dict)


ESCAPES = ["../../../../etc/passwd", "/etc/passwd", "..", "~root/.ssh", "a/../../b", "C:\\x\\..\\y"]


@pytest.mark.parametrize("name", ESCAPES)
def test_no_source_name_escapes_the_store(name: str, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    spec = dataclasses.replace(SPEC, source=name)
    entry = store.entry(spec)
    assert entry.parent == store.root and entry.name.isalnum()
    served = store.put(spec, fake_adapter(tmp_path / "trained"), {})
    assert served.resolve().is_relative_to(store.root.resolve())
    assert store.get(spec) == served
    written = {p.resolve() for p in tmp_path.rglob("*")}
    assert all(p.is_relative_to(tmp_path.resolve()) for p in written)
    adapter_name = source_adapter_name(name)
    assert "/" not in adapter_name and "\\" not in adapter_name and ".." not in adapter_name


def test_only_safetensors_enter_the_store(tmp_path: Path) -> None:
    folder = fake_adapter(tmp_path / "trained")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match="only safetensors"):
        AdapterStore(tmp_path / "store").put(SPEC, folder, {})


# A writer killed inside put(): mid-copy, or with the whole entry staged but not yet renamed.
KILL_POINTS = {
    "mid-copy": "copied = []\n_copy = shutil.copyfile\n"  # the first file copied, then killed
    "def copy(*a, **k):\n"
    "    if copied: os.kill(os.getpid(), signal.SIGKILL)\n"
    "    copied.append(_copy(*a, **k))\n"
    "    return copied[-1]\n"
    "shutil.copyfile = copy",
    "before the rename": "Path.rename = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)",
}
WRITER = """
import os, shutil, signal, sys
from pathlib import Path
from trainables.source_store import AdapterStore, SourceSpec
{kill}
AdapterStore(sys.argv[1]).put(SourceSpec(**eval(sys.argv[2])), Path(sys.argv[3]), {{}})
"""


@pytest.mark.parametrize("kill", KILL_POINTS.values(), ids=KILL_POINTS.keys())
def test_a_writer_killed_mid_put_leaves_nothing_served_and_its_leftover_is_swept(
    kill: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    store = AdapterStore(tmp_path / "store")
    spec = {"source": SPEC.source, "backbone": SPEC.backbone, "bottleneck": SPEC.bottleneck}
    writer = subprocess.run(
        [sys.executable, "-c", WRITER.format(kill=kill), str(store.root), repr(spec),
         str(fake_adapter(tmp_path / "trained"))], cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    assert writer.returncode == -9, writer.stderr  # SIGKILL
    (left,) = store.root.iterdir()  # its staging folder, never an entry
    assert left.name.startswith(".staging-")
    assert store.get(SPEC) is None and not store.entry(SPEC).exists()
    assert store.quarantined == []

    alive = store.root / f"{left.name.rsplit('-', 2)[0]}-{os.getpid()}-x"  # a live writer's
    alive.mkdir()
    assert store.sweep() == [left]
    assert sorted(store.root.iterdir()) == [alive]
    store.put(SPEC, fake_adapter(tmp_path / "retrained", b"new"), {})  # the study retrains it
    assert (store.get(SPEC) / "pytorch_adapter.safetensors").read_bytes() == b"new"
