"""The source-adapter store: one trained adapter per (source task, backbone, adapter config, seed).

Content-addressed: the folder name is a hash of everything that shaped the adapter, so a changed
config trains a new one and an unchanged one is reused. Each entry keeps its metrics and a sha256
of every file; an entry whose files no longer match is never used (it is retrained). Names never
reach the file system unhashed, so a source name cannot escape the store folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from search_spaces.errors import ConfigError

STORE_VERSION = 1  # bump when the training recipe of source adapters changes
META = "meta.json"
ADAPTER_DIR = "adapter"


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

    def entry(self, spec: SourceSpec) -> Path:
        return self.root / spec.key

    def get(self, spec: SourceSpec) -> Path | None:
        """The adapter folder of ``spec`` if present and intact, else None.

        A present entry whose checksums do not match is quarantined (renamed) so it is retrained.
        """
        entry = self.entry(spec)
        meta_file = entry / META
        if not meta_file.is_file():
            return None
        meta = json.loads(meta_file.read_text())
        if meta.get("spec") != _jsonable(spec) or file_digests(entry / ADAPTER_DIR) != meta.get(
            "sha256"
        ):
            entry.rename(entry.with_name(f"{entry.name}.corrupt-{os.getpid()}"))
            return None
        return entry / ADAPTER_DIR

    def put(self, spec: SourceSpec, adapter_dir: Path, metrics: dict[str, Any]) -> Path:
        """Move a freshly saved adapter folder into the store, atomically."""
        if any(p.suffix in (".bin", ".pt", ".pkl", ".pickle") for p in adapter_dir.rglob("*")):
            raise ConfigError(
                f"source adapter {spec.source!r}: only safetensors may enter the store"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
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

    def metrics(self, spec: SourceSpec) -> dict[str, Any]:
        return json.loads((self.entry(spec) / META).read_text())["metrics"]


def _jsonable(spec: SourceSpec) -> dict[str, Any]:
    """The spec as it reads back from meta.json (tuples become lists)."""
    return json.loads(json.dumps(asdict(spec)))
