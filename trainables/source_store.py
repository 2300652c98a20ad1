"""The source-adapter store: one trained adapter per (source task, backbone, adapter config, seed).

Content-addressed: the folder name is a hash of everything that shaped the adapter, so a changed
config trains a new one and an unchanged one is reused. Each entry keeps its metrics and a sha256
of every file; an entry whose files no longer match is never used (it is retrained). Names never
reach the file system unhashed, so a source name cannot escape the store folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from search_spaces.errors import ConfigError

STORE_VERSION = 1  # bump when the training recipe of source adapters changes
META = "meta.json"
ADAPTER_DIR = "adapter"
STAGING = ".staging"  # an entry being written: .staging-<host>-<pid>-<random>, renamed when whole


@dataclass(frozen=True)
class SourceSpec:
    """Everything that determines a source adapter's weights."""

    source: str
    backbone: str
    bottleneck: int
    seed: int = 0
    method: str = "pfeiffer"
    train: tuple[tuple[str, Any], ...] = ()  # TrainConfig overrides, sorted
    train_samples: int | None = None

    @property
    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": STORE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


def default_store() -> Path:
    return Path(
        os.environ.get("PEFT_TUNE_ADAPTERS", Path.home() / ".cache" / "peft-tune" / "adapters")
    )


def file_digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class AdapterStore:
    """A folder of trained source adapters, safe to share between trials and studies."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_store()
        self.quarantined: list[Path] = []  # entries that failed their checksums, moved aside

    def entry(self, spec: SourceSpec) -> Path:
        return self.root / spec.key

    def get(self, spec: SourceSpec) -> Path | None:
        """The adapter folder of ``spec`` if present and intact, else None.

        A present entry that is not intact (a file changed, added or missing, meta.json unreadable
        or for another spec) is quarantined: renamed aside, listed in ``quarantined``, retrained.
        """
        entry = self.entry(spec)
        if not entry.exists():
            return None
        if _intact(entry, spec):
            return entry / ADAPTER_DIR
        aside = entry.with_name(f"{entry.name}.corrupt-{os.getpid()}-{time.time_ns()}")
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            entry.rename(aside)
            self.quarantined.append(aside)
        return None

    def put(self, spec: SourceSpec, adapter_dir: Path, metrics: dict[str, Any]) -> Path:
        """Move a freshly saved adapter folder into the store, atomically."""
        if any(p.suffix in (".bin", ".pt", ".pkl", ".pickle") for p in adapter_dir.rglob("*")):
            raise ConfigError(
                f"source adapter {spec.source!r}: only safetensors may enter the store"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(os.getpid()), dir=self.root))
        shutil.copytree(adapter_dir, staging / ADAPTER_DIR)
        meta = {
            "spec": _jsonable(spec),
            "metrics": metrics,
            "sha256": file_digests(staging / ADAPTER_DIR),
        }
        (staging / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        target = self.entry(spec)
        try:
            staging.rename(target)
        except OSError:  # another process stored it first: keep theirs
            shutil.rmtree(staging, ignore_errors=True)
        return target / ADAPTER_DIR

    def sweep(self) -> list[Path]:
        """Delete the staging folders that a process of this host left when it died mid-write
        (a killed study): never an entry, since an entry appears only by renaming a whole one.
        Returns the folders deleted."""
        if not self.root.is_dir():
            return []
        removed = []
        for folder in self.root.glob(f"{_staging_prefix(None)}*"):
            pid = folder.name.removeprefix(_staging_prefix(None)).split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    def metrics(self, spec: SourceSpec) -> dict[str, Any]:
        return json.loads((self.entry(spec) / META).read_text())["metrics"]


def _staging_prefix(pid: int | None) -> str:
    """``.staging-<host>-<pid>-`` (``pid=None``: up to the host): a store may be shared by several
    hosts, and a process id says whether its writer lives on its own host only."""
    host = socket.gethostname().replace("-", "_")
    return f"{STAGING}-{host}-" + ("" if pid is None else f"{pid}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_intact(adapter_dir: Path | str) -> None:
    """Refuse a stored adapter whose files changed after the study checked them (a trial runs
    this before it loads its sources). A folder outside the store (no meta.json beside it) is
    the user's own and not checked."""
    meta_file = Path(adapter_dir).parent / META
    if not meta_file.is_file():
        return
    if file_digests(Path(adapter_dir)) != json.loads(meta_file.read_text()).get("sha256"):
        raise ConfigError(
            f"source adapter {str(adapter_dir)!r} no longer matches its checksums; "
            "delete the entry and run again to retrain it"
        )


def _intact(entry: Path, spec: SourceSpec) -> bool:
    """Whether ``entry`` holds ``spec``'s adapter with every file as it was stored."""
    try:
        meta = json.loads((entry / META).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("spec") != _jsonable(spec):
        return False
    return file_digests(entry / ADAPTER_DIR) == meta.get("sha256")


def _jsonable(spec: SourceSpec) -> dict[str, Any]:
    """The spec as it reads back from meta.json (tuples become lists)."""
    return json.loads(json.dumps(asdict(spec)))
