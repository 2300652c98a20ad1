"""``python -m cluster.bundle``: what an air-gapped GPU host lacks to run peft-tune, in parts.

    python -m cluster.bundle --requirement . --host-freeze host-freeze.txt \\
        --python-version 3.12 --platform manylinux_2_28_x86_64 --part-size 56M --out bundle

pip resolves the requirements for the host's Python and platform, the host's ``pip list
--format=freeze`` subtracts what it already has, pip downloads the rest as wheels, and the Ray
wheel is trimmed (``cluster/wheels.py`` says how, and which rule subtracts the host). Optionally
task data from the local mirror (``--data``). The files go, whole, into part folders of at most
``--part-size`` bytes (``out/part-NNN/`` with ``wheels/``, ``data/``, ``SHA256SUMS`` and
``install.sh``), so each folder can travel alone; a file larger than a part (the backbone's
wheel is 84 MB) is cut into pieces that fill a part each. Nothing is written to ``--out`` until
every part is complete.

QLoRA's 4-bit base (``--set quantize=nf4``) needs bitsandbytes, an optional extra of the project
(pyproject ``qlora``): ``--requirement '.[qlora]'`` instead of ``--requirement .`` carries its wheel
(43 MB, cut into pieces like any wheel larger than a part).

On the host, run every folder's ``install.sh`` (in any order, in one go or one per transfer): each
copies its files into the stage (``$PEFT_TUNE_BUNDLE_DIR``, default /tmp/peft-tune-bundle); the one
that completes the set checks every checksum, joins the pieces, installs the wheels with ``pip
install --no-index --no-deps --target $STAGE/site``, compiles them to bytecode (``compileall``: a
host that sets ``PYTHONDONTWRITEBYTECODE`` would compile every module again in every process) and
writes ``$STAGE/env.sh`` (``PYTHONPATH`` and ``PEFT_TUNE_DATA_DIR``). Exit status: 0 installed, 3
files of other parts still missing, 1 a checksum failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cluster.wheels import (
    DEFAULT_PLATFORMS,
    TRIM,
    Target,
    download,
    read_freeze,
    resolve,
    subtract_host,
    target_environment,
    trim,
)
from search_spaces.errors import ConfigError
from tuner.cli import run_cli

SUMS = "SHA256SUMS"
CHUNK = 1 << 20
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class BundlePlan:
    """What to bundle (pip requirements, data folders), for which host, in parts of what size."""

    out: Path
    requirements: tuple[str, ...]
    target: Target
    part_size: int
    host_freeze: Path | None = None
    data: tuple[str, ...] = ()  # "<dataset>/<config>" folders of the data mirror
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.requirements:
            raise ConfigError("--requirement is needed at least once, e.g. --requirement .")
        if self.part_size < 1024:
            raise ConfigError(f"part_size={self.part_size} must be >= 1024 bytes")
        if self.data and (self.data_dir is None or not self.data_dir.is_dir()):
            raise ConfigError(f"--data needs a data mirror folder, got data_dir={self.data_dir}")
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise ConfigError(f"--out {str(self.out)!r} is not empty: choose a new folder")


@dataclass(frozen=True)
class Entry:
    """One file of the bundle: where it goes (``wheels/x.whl``), where it is now, its label;
    or one piece of it (``wheels/x.whl.piece000``: ``size`` bytes from ``offset``)."""

    path: str
    source: Path
    size: int
    label: str
    offset: int = 0


def parse_size(text: str) -> int:
    """``"60M"`` -> 62914560; K, M, G are powers of 1024; a plain number is bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text.upper())
    if not match:
        raise ConfigError(f"size {text!r} must be a number with an optional K, M or G")
    return int(match[1]) * UNITS[match[2]]


def mib(size: int) -> str:
    """Bytes in --part-size's units: ``"43.6M"``, ``"3.4K"``."""
    return f"{size / 2**20:.1f}M" if size >= 2**20 else f"{size / 2**10:.1f}K"


def gather_wheels(plan: BundlePlan, stage: Path, say) -> list[Entry]:
    """Resolve, subtract the host, download and trim: the wheels the host lacks, in ``stage``."""
    target = plan.target
    say(f"resolving {' '.join(plan.requirements)} for cp{target.python_version.replace('.', '')} "
        f"{target.platforms[0]} with pip (a few minutes for a large closure)")  # fmt: skip
    resolved, reported = resolve(plan.requirements, target)
    env = target_environment(reported, target)
    if reported["python_version"] != target.python_version:
        say(f"note: pip evaluated markers for Python {reported['python_version']} (this one); "
            f"what Python {target.python_version} needs besides is checked below")  # fmt: skip
    host = read_freeze(plan.host_freeze) if plan.host_freeze else {}
    chosen = subtract_host(resolved, host, env, plan.requirements)
    say(f"pip resolved {len(resolved)} packages; {len(chosen.bundle)} to bundle, "
        f"{len(chosen.on_host)} on the host, {len(chosen.unneeded)} needed only by those or not "
        f"on Python {target.python_version}")  # fmt: skip
    if chosen.on_host:
        say(f"  on the host: {', '.join(f'{n} {v}' for n, v in chosen.on_host.items())}")
    for name, why in chosen.over_host.items():
        say(f"  bundled over the host's: {name} ({why})")
    if chosen.unneeded:
        say(f"  not needed: {', '.join(chosen.unneeded)}")
    for r in resolved:
        if r.is_dir:
            say(f"  not bundled: {r.name} {r.version} (a local folder: its code travels with the job)")  # fmt: skip
    if not chosen.bundle:
        return []
    paths = download(chosen.bundle, target, stage / "wheels", say)
    entries = []
    for r, path in zip(chosen.bundle, paths, strict=True):
        label = f"{r.name} {r.version}"
        if r.name in TRIM:
            saved = trim(path, TRIM[r.name])
            label += f" (trimmed: -{mib(saved)})"
        entries.append(Entry(f"wheels/{path.name}", path, path.stat().st_size, label))
    return entries


def data_entries(plan: BundlePlan) -> list[Entry]:
    entries = []
    for item in plan.data:
        source = plan.data_dir / item  # type: ignore[operator]
        if not source.is_dir():
            raise ConfigError(f"--data {item!r}: no folder {source}")
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            rel = f"data/{item}/{path.relative_to(source)}"
            entries.append(Entry(rel, path, path.stat().st_size, label=rel))
    return entries


def _blocks(entry: Entry):
    with entry.source.open("rb") as handle:
        handle.seek(entry.offset)
        left = entry.size
        while left and (block := handle.read(min(CHUNK, left))):
            left -= len(block)
            yield block


def sha256(entry: Entry) -> str:
    digest = hashlib.sha256()
    for block in _blocks(entry):
        digest.update(block)
    return digest.hexdigest()


def _pieces(entry: Entry, budget: int) -> list[Entry]:
    if entry.size <= budget:
        return [entry]
    count = -(-entry.size // budget)
    if count > 1000:  # install.sh joins pieces in name order: three digits
        raise ConfigError(f"{entry.path} ({entry.size:,} bytes) would be cut into {count} pieces: raise --part-size")  # fmt: skip
    return [
        Entry(f"{entry.path}.piece{i:03d}", entry.source, min(budget, entry.size - offset),
              f"{entry.label} (piece {i + 1}/{count})", offset)
        for i, offset in enumerate(range(0, entry.size, budget))
    ]  # fmt: skip


def cut(entries: list[Entry], part_size: int) -> tuple[list[Entry], int]:
    """Files too large for a part cut into pieces that fill one each (install.sh joins them);
    returns the pieces and what every part spends on install.sh and SHA256SUMS. Refuses a
    ``part_size`` that leaves no room for files."""
    pieces = entries
    while True:
        overhead = len(INSTALL_SH.encode()) + sum(67 + len(e.path.encode()) for e in pieces)
        if overhead >= part_size:
            raise ConfigError(
                f"--part-size {part_size:,} bytes leaves no room for files: install.sh and "
                f"SHA256SUMS take {overhead:,} bytes in each part"
            )
        again = [piece for e in entries for piece in _pieces(e, part_size - overhead)]
        if [e.path for e in again] == [e.path for e in pieces]:
            return again, overhead
        pieces = again


def pack(entries: list[Entry], budget: int) -> list[list[Entry]]:
    """Files into as few parts of at most ``budget`` bytes as first-fit by decreasing size finds
    (each file fits: :func:`cut` made sure)."""
    parts: list[list[Entry]] = []
    for entry in sorted(entries, key=lambda e: (-e.size, e.path)):
        part = next((p for p in parts if sum(e.size for e in p) + entry.size <= budget), None)
        if part is None:
            parts.append(part := [])
        part.append(entry)
    return parts


def build(plan: BundlePlan, say=print) -> dict:
    """Write the part folders under ``plan.out``; returns the manifest (also written there).

    Everything is assembled in a hidden folder beside ``plan.out`` and renamed into place at the
    end: a refusal or a failure leaves ``plan.out`` as it was."""
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=plan.out.parent, prefix=f".{plan.out.name}.") as tmp:
        work = Path(tmp)
        entries = gather_wheels(plan, work / "stage", say) + data_entries(plan)
        if not entries:
            raise ConfigError(f"nothing to bundle: the host has all of {' '.join(plan.requirements)}")  # fmt: skip
        say(f"{len(entries)} files, {mib(sum(e.size for e in entries))}:")
        for e in sorted(entries, key=lambda e: e.path):
            say(f"  {e.label:<48} {mib(e.size):>8}")
        pieces, overhead = cut(entries, plan.part_size)
        parts = pack(pieces, plan.part_size - overhead)
        sums = "".join(f"{sha256(e)}  {e.path}\n" for e in pieces)
        result = work / "out"
        manifest = _write_parts(plan, parts, sums, result, say)
        result.rename(plan.out)  # replaces an empty --out
    return manifest


def _write_parts(plan: BundlePlan, parts: list[list[Entry]], sums: str, result: Path, say) -> dict:
    listing, total = [], 0
    for index, files in enumerate(parts):
        folder = result / f"part-{index:03d}"
        for e in files:
            (folder / e.path).parent.mkdir(parents=True, exist_ok=True)
            with (folder / e.path).open("wb") as target:
                for block in _blocks(e):
                    target.write(block)
        (folder / SUMS).write_text(sums)
        (folder / "install.sh").write_text(INSTALL_SH)
        (folder / "install.sh").chmod(0o755)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        total += size
        listing.append({"part": folder.name, "bytes": size, "files": [e.path for e in files]})
        say(f"{folder.name}  {mib(size):>8}  " + ", ".join(e.label for e in files))
    manifest = {
        "requirements": list(plan.requirements), "python_version": plan.target.python_version,
        "platforms": list(plan.target.platforms), "part_size": plan.part_size,
        "bytes": total, "parts": listing,
    }  # fmt: skip
    (result / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


INSTALL_SH = r"""#!/bin/sh
# Written by `python -m cluster.bundle`. Run the install.sh of every part folder, in any order.
# Exit 0: installed (or already); 3: files of other parts still missing; 1: a checksum failed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
stage=${PEFT_TUNE_BUNDLE_DIR:-/tmp/peft-tune-bundle}
python=${PYTHON:-python3}
if [ -e "$stage/.installed" ]; then echo "bundle: already installed in $stage"; exit 0; fi
mkdir -p "$stage"
for dir in wheels data; do
  if [ -d "$here/$dir" ]; then cp -R "$here/$dir" "$stage/"; fi
done
cp "$here/SHA256SUMS" "$stage/"
cd "$stage"
want=0; have=0
while IFS= read -r line; do
  want=$((want + 1))
  if [ -e "${line#*  }" ]; then have=$((have + 1)); fi
done < SHA256SUMS
if [ "$have" -lt "$want" ]; then echo "bundle: $have of $want files in $stage"; exit 3; fi
sha256sum -c --quiet SHA256SUMS || exit 1
for first in $(find wheels data -name '*.piece000' 2>/dev/null); do
  whole=${first%.piece000}
  cat "$whole".piece* > "$whole.joining" && mv "$whole.joining" "$whole"
done
if ls wheels/*.whl >/dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$stage/site" wheels/*.whl
  "$python" -m compileall -q -j 0 "$stage/site" >/dev/null || echo "bundle: not all compiled"
fi
{ echo "export PYTHONPATH=$stage/site\${PYTHONPATH:+:\$PYTHONPATH}"
  if [ -d data ]; then echo "export PEFT_TUNE_DATA_DIR=$stage/data"; fi; } > env.sh
touch .installed
echo "bundle: installed in $stage; now: . $stage/env.sh"
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.bundle", description=__doc__.split("\n")[0])
    p.add_argument("--requirement", action="append", default=[], metavar="REQ",
                   help="what the host needs, with everything it depends on: a pip requirement "
                        "(repeat), e.g. '.' (this project's dependencies), '.[qlora]' (with "
                        "bitsandbytes, for quantize=nf4) or 'optuna>=4'")  # fmt: skip
    p.add_argument("--host-freeze", metavar="FILE",
                   help="`python -m pip list --format=freeze` run on the host. A package in it is "
                        "left out when the host's version satisfies every requirement on it from "
                        "what is bundled (a pin such as transformers==4.57.6 included), and so is "
                        "what only such packages need; default: bundle the whole closure")  # fmt: skip
    p.add_argument("--python-version", default="3.12", help="the host's Python, e.g. 3.12")
    p.add_argument("--platform", action="append", default=[],
                   help="pip platform tags of the host (repeat); default: manylinux x86_64")  # fmt: skip
    p.add_argument(
        "--find-links",
        action="append",
        default=[],
        metavar="DIR_OR_URL",
        help="also take wheels from here (pip's --find-links; repeat)",
    )
    p.add_argument(
        "--no-index",
        action="store_true",
        help="only --find-links, no package index (pip's --no-index)",
    )
    p.add_argument("--part-size", default="60M", help="largest part folder, e.g. 56M")
    p.add_argument("--data", action="append", default=[], metavar="DATASET/CONFIG",
                   help="a task folder of the data mirror to include (repeat), e.g. glue/sst2")  # fmt: skip
    p.add_argument("--data-dir", help="the data mirror (default $PEFT_TUNE_DATA_DIR)")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the part folders")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    data_dir = args.data_dir or os.environ.get("PEFT_TUNE_DATA_DIR")
    for place in args.find_links:
        if "://" not in place and not Path(place).is_dir():
            raise ConfigError(f"--find-links {place!r} is not a folder or a URL")
    plan = BundlePlan(
        out=Path(args.out),
        requirements=tuple(args.requirement),
        target=Target(
            python_version=args.python_version,
            platforms=tuple(args.platform) or DEFAULT_PLATFORMS,
            find_links=tuple(args.find_links),
            no_index=args.no_index,
        ),  # fmt: skip
        part_size=parse_size(args.part_size),
        host_freeze=Path(args.host_freeze) if args.host_freeze else None,
        data=tuple(args.data),
        data_dir=Path(data_dir) if data_dir else None,
    )
    manifest = build(plan, say=lambda line: print(line, flush=True))
    print(f"{len(manifest['parts'])} parts, {mib(manifest['bytes'])} in {plan.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
