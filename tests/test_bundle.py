"""cluster.bundle: hand-made wheels with dependencies, resolved by real pip from a local folder (no
network), the host's freeze subtracted, cut into parts smaller than a wheel, installed by the
parts' own install.sh in any order and imported; a part size with no room for files and a
corrupted part are refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from cluster.bundle import Entry, cut, main, pack, parse_size
from cluster.wheels import Resolved, Target, expand_platforms, read_freeze, subtract_host, trim
from search_spaces.errors import ConfigError
from tuner.cli import run_cli

# alpha needs beta>=2, beta needs gamma, gamma needs delta; the host has beta 1.0 (too old) and
# gamma 0.5 (any version will do), so the bundle holds alpha and beta, and delta, needed only by
# the host's gamma, stays out.
WHEELS = {
    "alpha_pkg": ("1.0", ["beta-pkg>=2"]),
    "beta_pkg": ("2.0", ["gamma-pkg"]),
    "gamma_pkg": ("1.0", ["delta-pkg"]),
    "delta_pkg": ("1.0", []),
}
HOST_FREEZE = "beta-pkg==1.0\ngamma_pkg==0.5\npytest==8.0.0\n"


def _wheel(folder: Path, name: str, version: str, requires: list[str], members=()) -> Path:
    """A minimal pure-python wheel that pip resolves and installs: one module, METADATA (with
    its Requires-Dist), WHEEL, RECORD."""
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files = {
        f"{name}/__init__.py": f"VALUE = {len(name)}\n" + "# padding\n" * 300,
        **{m: "x" for m in members},
        f"{dist}/METADATA": meta + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for arcname, text in files.items():
            archive.writestr(arcname, text)
    return path


@pytest.fixture(autouse=True)
def offline_pip(monkeypatch):
    """pip sees no config file, no PIP_* settings: only what the test passes."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


@pytest.fixture()
def source(tmp_path) -> list[str]:
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    for name, (version, requires) in WHEELS.items():
        _wheel(wheels, name, version, requires)
    (tmp_path / "host-freeze.txt").write_text(HOST_FREEZE)
    data = tmp_path / "mirror" / "glue" / "tiny"
    data.mkdir(parents=True)
    (data / "labels.json").write_text('["neg", "pos"]')
    return ["--requirement", "alpha-pkg", "--no-index", "--find-links", str(wheels),
            "--host-freeze", str(tmp_path / "host-freeze.txt"), "--python-version", "3.12",
            "--platform", "manylinux_2_28_x86_64", "--data", "glue/tiny",
            "--data-dir", str(tmp_path / "mirror")]  # fmt: skip


def _install(part: Path, stage: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PEFT_TUNE_BUNDLE_DIR": str(stage), "PYTHON": sys.executable}
    return subprocess.run(["sh", str(part / "install.sh")], env=env, capture_output=True, text=True)


def test_resolves_subtracts_the_host_and_installs_from_parts(source, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert run_cli(main, [*source, "--part-size", "4K", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "on the host: gamma-pkg 0.5\n" in printed
    assert "bundled over the host's: beta-pkg (host 1.0, but alpha-pkg 1.0 needs beta-pkg>=2)" in printed  # fmt: skip
    assert "not needed: delta-pkg" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(f for p in manifest["parts"] for f in p["files"])
    assert files == ["data/glue/tiny/labels.json",  # each wheel is larger than a part
                     "wheels/alpha_pkg-1.0-py3-none-any.whl.piece000", "wheels/alpha_pkg-1.0-py3-none-any.whl.piece001",
                     "wheels/beta_pkg-2.0-py3-none-any.whl.piece000", "wheels/beta_pkg-2.0-py3-none-any.whl.piece001"]  # fmt: skip
    parts = sorted(out.glob("part-*"))
    assert len(parts) == len(manifest["parts"]) >= 4
    for part in parts:
        assert sum(f.stat().st_size for f in part.rglob("*") if f.is_file()) <= 4 * 1024
        assert f"{part.name}  " in printed

    stage = tmp_path / "stage"
    for part in reversed(parts[1:]):
        assert _install(part, stage).returncode == 3  # the other parts' files are missing
    done = _install(parts[0], stage)
    assert done.returncode == 0, done.stdout + done.stderr
    env_sh = (stage / "env.sh").read_text()
    assert f"PYTHONPATH={stage}/site" in env_sh and f"PEFT_TUNE_DATA_DIR={stage}/data" in env_sh
    assert (stage / "data" / "glue" / "tiny" / "labels.json").read_text() == '["neg", "pos"]'
    installed = sorted(p.name for p in (stage / "site").iterdir() if not p.name.endswith("-info"))
    assert installed == ["alpha_pkg", "beta_pkg"]
    # compiled at install: a host that writes no bytecode does not compile them in every process
    tag = sys.implementation.cache_tag
    for name in installed:
        assert (stage / "site" / name / "__pycache__" / f"__init__.{tag}.pyc").is_file()
    imported = subprocess.run(
        [sys.executable, "-c", "import alpha_pkg, beta_pkg; print(alpha_pkg.VALUE + beta_pkg.VALUE)"],
        env={**os.environ, "PYTHONPATH": str(stage / "site"), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert imported.stdout.strip() == "17", imported.stderr
    assert _install(parts[1], stage).returncode == 0  # a second run is a no-op

    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    wheel = next(damaged.glob("part-*/wheels/alpha_pkg-*.whl.piece001"))
    wheel.write_bytes(b"x" + wheel.read_bytes()[1:])
    stage = tmp_path / "stage-damaged"
    results = [_install(part, stage).returncode for part in sorted(damaged.glob("part-*"))]
    assert results[-1] == 1 and not (stage / ".installed").exists()


def test_a_part_size_without_room_for_files_is_refused_before_writing(source, tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    assert run_cli(main, [*source, "--part-size", "1K", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("error: --part-size 1,024 bytes leaves no room for files: install.sh")
    assert list(out.iterdir()) == [] and list(tmp_path.glob(".bundle.*")) == []


def test_bad_input_is_one_line_naming_the_value(source, tmp_path, capsys):
    cases = {
        "--python-version=312": "python_version='312' must look like 3.12",
        "--platform=Linux x86": "platform='Linux x86' must be a pip platform tag",
        "--part-size=6 apples": "size '6 apples' must be a number",
        "--requirement=no-such-pkg-xyz": "pip could not resolve alpha-pkg no-such-pkg-xyz",
    }
    for arg, message in cases.items():
        assert run_cli(main, [*source, arg, "--out", str(tmp_path / "b")]) == 2, arg
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    freeze = tmp_path / "freeze-bad.txt"
    freeze.write_text("torch @ file:///opt/torch.whl\n")
    with pytest.raises(ConfigError, match=r"freeze-bad.txt:1: 'torch @ file:///opt/torch.whl' is not name==version .*pip list --format=freeze"):  # fmt: skip
        read_freeze(freeze)


def _r(name, version, *requires, requested=False, is_dir=False):
    return Resolved(name, version, f"https://x/{name}", tuple(requires), requested, is_dir=is_dir)


ENV = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
       "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "platform_release": "", "platform_version": "", "implementation_version": "3.12.0"}  # fmt: skip


def test_host_rule_keeps_what_a_requirement_excludes_and_drops_what_only_the_host_needs():
    """The GPU host's real case: its huggingface-hub 1.x and tokenizers 0.23.2 are too new for
    transformers 4.57.6, which it has at 5.x; its torch will do, and takes its CUDA wheels along."""
    resolved = [
        _r("peft-tune", "0.1.0", "torch>=2.4", "transformers==4.57.6", "ray[tune]>=2.40",
           'pytest>=8; extra == "test"', requested=True, is_dir=True),
        _r("transformers", "4.57.6", "huggingface-hub<1.0,>=0.34.0", "tokenizers<=0.23.0,>=0.22.0"),
        _r("huggingface-hub", "0.36.2"), _r("tokenizers", "0.22.2"),
        _r("torch", "2.10.0", 'nvidia-cudnn-cu12==9.10.2.21; platform_system == "Linux"'),
        _r("nvidia-cudnn-cu12", "9.10.2.21"),
        _r("ray", "2.60.0", 'pandas; extra == "tune"', 'importlib-metadata; python_version < "3.12"'),
        _r("pandas", "3.1.1"), _r("importlib-metadata", "9.1.0"),
    ]  # fmt: skip
    host = {"torch": Version("2.11.0"), "transformers": Version("5.17.0"), "pandas": Version("3.0.6"),
            "huggingface-hub": Version("1.33.0"), "tokenizers": Version("0.23.2")}  # fmt: skip
    chosen = subtract_host(resolved, host, ENV)
    assert [r.name for r in chosen.bundle] == ["transformers", "huggingface-hub", "tokenizers", "ray"]  # fmt: skip
    assert chosen.on_host == {"pandas": "3.0.6", "torch": "2.11.0"}
    assert chosen.unneeded == ["importlib-metadata", "nvidia-cudnn-cu12"]
    assert "transformers 4.57.6 needs huggingface-hub<1.0,>=0.34.0" in chosen.over_host["huggingface-hub"]  # fmt: skip
    # a --requirement pin counts like a project pin
    pinned = subtract_host([_r("torch", "2.10.0", requested=True)], host, ENV, ("torch==2.10.0",))
    assert [r.name for r in pinned.bundle] == ["torch"]
    # what the host's Python needs but pip (running on another Python) did not resolve is refused
    lacking = [_r("a", "1", 'b; python_version >= "3.12"', requested=True)]
    with pytest.raises(ConfigError, match=r"pip did not resolve b \(needed by a"):
        subtract_host(lacking, {}, ENV)


def test_cut_and_pack_fill_parts_and_trim_drops_members(tmp_path):
    entries = [Entry(f"wheels/{n}.whl", tmp_path, size, n) for n, size in
               (("a", 600), ("b", 500), ("c", 400), ("d", 300))]  # fmt: skip
    parts = pack(entries, budget=1000)
    assert [[e.label for e in part] for part in parts] == [["a", "c"], ["b", "d"]]
    pieces, overhead = cut([Entry("wheels/big.whl", tmp_path, 8_000, "big")], part_size=6_000)
    budget = 6_000 - overhead
    assert overhead > 1000 and [(p.path, p.offset, p.size) for p in pieces] == [
        ("wheels/big.whl.piece000", 0, budget), ("wheels/big.whl.piece001", budget, 8_000 - budget)
    ]  # fmt: skip
    assert parse_size("60M") == 60 * 2**20 and parse_size("2048") == 2048

    wheel = _wheel(tmp_path, "ray", "2.60.0", [],
                   members=("ray/jars/ray.jar", "ray/rllib/algo.py", "ray/dash/a.js.map", "ray/dash/a.js"))  # fmt: skip
    assert trim(wheel, ("ray/jars/*", "ray/rllib/*", "*.js.map")) > 0
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        record = archive.read("ray-2.60.0.dist-info/RECORD").decode()
    assert "ray/dash/a.js" in names and "ray/dash/a.js" in record
    assert not any(
        "jars" in n or "rllib" in n or n.endswith(".map") for n in names + record.split()
    )


def test_target_expands_manylinux_tags_and_refuses_bad_values():
    assert expand_platforms(("manylinux_2_20_x86_64",)) == (
        "manylinux_2_20_x86_64", "manylinux_2_19_x86_64", "manylinux_2_18_x86_64",
        "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
    )  # fmt: skip
    assert expand_platforms(("macosx_11_0_arm64",)) == ("macosx_11_0_arm64",)
    with pytest.raises(ConfigError, match="python_version='312'"):
        Target(python_version="312")
