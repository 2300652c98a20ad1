"""What an air-gapped host lacks, as wheels: pip resolves, the host's freeze subtracts, pip downloads.

1. :func:`resolve` runs pip's own resolver for the host's Python and platform
   (``pip install --dry-run --ignore-installed --report``) and reads its ``install`` list.
2. :func:`subtract_host` subtracts the host (``pip list --format=freeze`` there). **The rule**: a package
   is left out when the host has it at a version that satisfies every requirement on it from the
   packages that are bundled (and from ``--requirement``); whatever only the left-out packages
   need is left out with them. So the host's torch stays (``torch>=2.4``) and takes its CUDA
   wheels with it, while the host's huggingface-hub 1.x is bundled over, because transformers
   4.57.6 needs ``<1.0``. A project pin (``transformers==4.57.6``) is such a requirement.
3. :func:`download` fetches exactly the selected ``name==version`` wheels (``pip download
   --no-deps``, same platform and index flags) and :func:`trim` removes from them what a trial
   never loads (``TRIM``).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from search_spaces.errors import ConfigError

# The host's glibc: a manylinux_2_X tag takes the older ones along (expand_platforms).
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64",)
# Members removed from a wheel before it is packed: nothing on a trial's path imports them.
TRIM = {"ray": ("ray/jars/*", "ray/rllib/*", "*.js.map")}


@dataclass(frozen=True)
class Target:
    """The host's interpreter and where wheels come from, as pip's flags."""

    python_version: str = "3.12"
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"3\.\d+", self.python_version):
            raise ConfigError(f"python_version={self.python_version!r} must look like 3.12")
        for tag in self.platforms:
            if not re.fullmatch(r"[a-z0-9_]+", tag):
                raise ConfigError(f"platform={tag!r} must be a pip platform tag, e.g. {DEFAULT_PLATFORMS[0]}")  # fmt: skip

    def pip_args(self) -> list[str]:
        args = ["--only-binary=:all:", "--implementation", "cp",
                "--python-version", self.python_version]  # fmt: skip
        for tag in expand_platforms(self.platforms):
            args += ["--platform", tag]
        for place in self.find_links:
            args += ["--find-links", place]
        return args + (["--no-index"] if self.no_index else [])


def expand_platforms(tags: tuple[str, ...]) -> tuple[str, ...]:
    """Each ``manylinux_2_X_ARCH`` with every older manylinux tag of its arch, as pip does for the
    machine it runs on (but not for ``--platform``): a glibc 2.28 host runs manylinux2014 wheels."""
    out = []
    for tag in tags:
        out.append(tag)
        match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
        if match:
            minor, arch = int(match[1]), match[2]
            out += [f"manylinux_2_{k}_{arch}" for k in range(minor - 1, 16, -1)]
            out += [f"manylinux{old}_{arch}" for old, since in LEGACY_MANYLINUX if minor >= since]
    return tuple(dict.fromkeys(out))


LEGACY_MANYLINUX = (("2014", 17), ("2010", 12), ("1", 5))  # PEP 600: the glibc minor of each


@dataclass(frozen=True)
class Resolved:
    """One entry of pip's report: a distribution at the version the resolver chose."""

    name: str  # canonical (PEP 503)
    version: str
    url: str
    requires: tuple[str, ...] = ()
    requested: bool = False
    extras: tuple[str, ...] = ()
    is_dir: bool = False  # a local project folder: not a wheel, its code travels with the job
    is_direct: bool = False


@dataclass
class Selection:
    """What to bundle, and why the rest is not."""

    bundle: list[Resolved]
    on_host: dict[str, str]  # name -> the host's version, which satisfies every requirement on it
    unneeded: list[str]  # only the packages on the host need them (or markers exclude them)
    over_host: dict[str, str] = field(default_factory=dict)  # name -> why the host's version won't do  # fmt: skip


def _pip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def _pip_error(stderr: str) -> str:
    """pip's first ``ERROR:`` line (its messages run over many lines)."""
    lines = [line for line in stderr.splitlines() if line.startswith("ERROR:")]
    return (lines or stderr.strip().splitlines() or ["(no message)"])[0]


def resolve(requirements: tuple[str, ...], target: Target) -> tuple[list[Resolved], dict]:
    """pip's resolution of ``requirements`` for ``target``: the install list and the marker
    environment pip reported (that of the running interpreter)."""
    with tempfile.TemporaryDirectory(prefix="peft-tune-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        proc = _pip(["install", "--dry-run", "--ignore-installed", "--quiet",
                     "--report", str(report), *target.pip_args(), *requirements])  # fmt: skip
        if proc.returncode != 0:
            raise ConfigError(
                f"pip could not resolve {' '.join(requirements)} for Python "
                f"{target.python_version} {target.platforms[0]}: {_pip_error(proc.stderr)}"
            )
        data = json.loads(report.read_text())
    found = []
    for item in data["install"]:
        meta, info = item["metadata"], item["download_info"]
        found.append(Resolved(
            name=canonicalize_name(meta["name"]), version=meta["version"], url=info["url"],
            requires=tuple(meta.get("requires_dist", ())), requested=item.get("requested", False),
            extras=tuple(item.get("requested_extras", ())), is_dir="dir_info" in info,
            is_direct=item.get("is_direct", False),
        ))  # fmt: skip
    return found, data["environment"]


def target_environment(reported: dict, target: Target) -> dict[str, str]:
    """PEP 508 marker values of the host: pip's (this machine's) with the host's Python and OS."""
    env = {**reported, "python_version": target.python_version,
           "python_full_version": f"{target.python_version}.0",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip
    tag = target.platforms[0]
    system = next((s for prefix, s in (("manylinux", "Linux"), ("musllinux", "Linux"),
                                       ("linux", "Linux"), ("macosx", "Darwin")) if tag.startswith(prefix)), None)  # fmt: skip
    if system:
        env["platform_system"] = system
        env["sys_platform"] = {"Linux": "linux", "Darwin": "darwin"}[system]
        env["os_name"] = "posix"
        env["platform_machine"] = re.sub(
            r"^(many|musl)?linux(_\d+_\d+|\d+)?_|^macosx_\d+_\d+_", "", tag
        )
    return env


def read_freeze(path: Path) -> dict[str, Version]:
    """``name==version`` lines (``pip list --format=freeze`` on the host) -> {name: version}."""
    if not path.is_file():
        raise ConfigError(f"--host-freeze {str(path)!r} is not a file")
    host: dict[str, Version] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*===?\s*(\S+)", line)
        try:
            if not match:
                raise InvalidVersion(line)
            host[canonicalize_name(match[1])] = Version(match[2])
        except InvalidVersion:
            raise ConfigError(
                f"--host-freeze {path}:{number}: {raw.strip()!r} is not name==version "
                "(write the file with `python -m pip list --format=freeze` on the host)"
            ) from None
    return host


def _applies(req: Requirement, env: dict[str, str], extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras))


def _user_requirements(requirements: tuple[str, ...]) -> dict[str, list[Requirement]]:
    """The named ``--requirement`` values (paths such as ``.[gpu]`` are not names)."""
    out: dict[str, list[Requirement]] = defaultdict(list)
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        out[canonicalize_name(req.name)].append(req)
    return out


def subtract_host(
    resolved: list[Resolved],
    host: dict[str, Version],
    env: dict[str, str],
    requirements: tuple[str, ...] = (),
) -> Selection:
    """Subtract the host from pip's resolution (the rule is in the module docstring).

    Walks the requirement graph from the requested packages under the host's markers, not
    entering packages the host satisfies, until nothing more can be left out. Raises
    :class:`ConfigError` when a package the host needs was not resolved (pip evaluates markers
    for the running Python, not the host's) and the host does not have it either."""
    on_host: set[str] = set()
    while True:
        reached, needs = _walk(resolved, host, env, requirements, on_host)
        fits = {
            name for name in reached - on_host if name in host
            and all(req.specifier.contains(host[name], prereleases=True) for _, req in needs[name])
        }  # fmt: skip
        if not fits:
            break
        on_host |= fits  # sound: leaving packages out only removes requirements
    over_host = {
        name: f"host {host[name]}, but "
        + ", ".join(sorted({f"{who} needs {req.name}{req.specifier}" for who, req in needs[name]
                            if not req.specifier.contains(host[name], prereleases=True)}))
        for name in sorted(reached & host.keys() - on_host)
    }  # fmt: skip
    return Selection(
        bundle=[r for r in resolved if r.name in reached - on_host and not r.is_dir],
        on_host={name: str(host[name]) for name in sorted(reached & on_host)},
        unneeded=sorted(r.name for r in resolved if r.name not in reached),
        over_host=over_host,
    )


Needs = dict[str, list[tuple[str, Requirement]]]  # package -> (who needs it, the requirement)


def _walk(
    resolved: list[Resolved],
    host: dict[str, Version],
    env: dict[str, str],
    requirements: tuple[str, ...],
    on_host: set[str],
) -> tuple[set[str], Needs]:
    """One walk of the requirement graph from the requested packages under the host's markers,
    not entering the packages in ``on_host``: the packages reached and who needs each. Raises
    :class:`ConfigError` for a needed package that neither pip resolved nor the host has."""
    by_name = {r.name: r for r in resolved}
    needs: Needs = defaultdict(list)
    for name, reqs in _user_requirements(requirements).items():
        needs[name] += [("--requirement", r) for r in reqs]
    reached, missing = set(), []
    stack = [(r.name, frozenset(r.extras)) for r in resolved if r.requested]
    seen = set()
    while stack:
        name, extras = stack.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        reached.add(name)
        if name in on_host:
            continue
        for text in by_name[name].requires:
            req = Requirement(text)
            if not _applies(req, env, extras):
                continue
            dep = canonicalize_name(req.name)
            needs[dep].append((f"{name} {by_name[name].version}", req))
            if dep in by_name:
                stack.append((dep, frozenset(req.extras)))
            elif not (dep in host and req.specifier.contains(host[dep], prereleases=True)):
                missing.append(f"{dep} (needed by {name}: {text})")
    if missing:
        raise ConfigError(
            f"pip did not resolve {', '.join(sorted(set(missing)))} for Python "
            f"{env['python_version']}: run cluster.bundle with Python {env['python_version']} "
            "or add it with --requirement"
        )
    return reached, needs


def download(
    wanted: list[Resolved], target: Target, dest: Path, progress: Callable[[str], None]
) -> list[Path]:
    """The wheel of each ``wanted`` entry, in ``dest`` (one ``pip download --no-deps``)."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{r.name} @ {r.url}" if r.is_direct else f"{r.name}=={r.version}" for r in wanted]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off",
           "-d", str(dest), *target.pip_args(), *specs]  # fmt: skip
    done = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            if line.startswith(("Saved ", "File was already downloaded")):
                done += 1
                progress(f"downloaded {done}/{len(wanted)}: {Path(line.split()[-1]).name}")
        stderr = proc.stderr.read()
    if proc.returncode != 0:
        raise ConfigError(f"pip could not download the wheels: {_pip_error(stderr)}")
    wheels = {}
    for path in dest.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        wheels[(name, version)] = path
    out = []
    for r in wanted:
        found = wheels.get((canonicalize_name(r.name), Version(r.version)))
        if found is None:
            raise ConfigError(f"pip downloaded no wheel for {r.name}=={r.version} into {dest}")
        out.append(found)
    return out


def trim(path: Path, patterns: tuple[str, ...]) -> int:
    """Rewrite the wheel at ``path`` without the members matching ``patterns`` (and their
    RECORD rows); returns the bytes saved."""
    before = path.stat().st_size
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            if any(fnmatch.fnmatch(info.filename, p) for p in patterns):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                rows = csv.reader(io.StringIO(data.decode()))
                text = io.StringIO()
                csv.writer(text, lineterminator="\n").writerows(
                    row for row in rows
                    if row and not any(fnmatch.fnmatch(row[0], p) for p in patterns)
                )  # fmt: skip
                data = text.getvalue().encode()
            target.writestr(info, data)
    path.write_bytes(buffer.getvalue())
    return before - path.stat().st_size
