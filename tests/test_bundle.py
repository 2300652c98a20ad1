"""cluster.bundle: two hand-made wheels and a data folder, cut into 1 KiB parts, reassembled and
installed by the parts' own install.sh, in any order; a corrupted part is refused. No network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cluster.bundle import BundlePlan, build, parse_size, pinned, wheel_matches
from search_spaces.errors import ConfigError


def _wheel(folder: Path, name: str, version: str, value: int) -> Path:
    """A minimal pure-python wheel that pip installs: one module, METADATA, WHEEL, RECORD."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\n" + "# padding\n" * 300,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for arcname, text in files.items():
            archive.writestr(arcname, text)
    return path


@pytest.fixture()
def bundle(tmp_path) -> Path:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "alpha_pkg", "1.0", 1)
    _wheel(wheels, "beta_pkg", "2.0", 2)
    data = tmp_path / "mirror" / "glue" / "tiny"
    data.mkdir(parents=True)
    (data / "labels.json").write_text('["neg", "pos"]')
    plan = BundlePlan(
        out=tmp_path / "bundle", requirements=("alpha-pkg==1.0", "beta_pkg==2.0"),
        python_version="3.12", platforms=("manylinux_2_17_x86_64",), part_size=1024,
        wheel_dir=wheels, data=("glue/tiny",), data_dir=tmp_path / "mirror",
    )  # fmt: skip
    manifest = build(plan)
    assert manifest["wheels"] == ["alpha_pkg-1.0-py3-none-any.whl", "beta_pkg-2.0-py3-none-any.whl"]
    assert len(manifest["parts"]) >= 3
    return plan.out


def _install(part: Path, stage: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PEFT_TUNE_BUNDLE_DIR": str(stage), "PYTHON": sys.executable}
    return subprocess.run(["sh", str(part / "install.sh")], env=env, capture_output=True, text=True)


def test_parts_reassemble_and_install_in_any_order(bundle, tmp_path):
    parts = sorted(bundle.glob("part-*"))
    for part in parts:
        assert sum(f.stat().st_size for f in part.glob("bundle.tar.part*")) <= 1024
    stage = tmp_path / "stage"
    for part in reversed(parts[1:]):
        assert _install(part, stage).returncode == 3  # parts still missing
    done = _install(parts[0], stage)
    assert done.returncode == 0, done.stdout + done.stderr
    env_sh = (stage / "env.sh").read_text()
    assert f"PYTHONPATH={stage}/site" in env_sh and f"PEFT_TUNE_DATA_DIR={stage}/data" in env_sh
    assert (stage / "data" / "glue" / "tiny" / "labels.json").read_text() == '["neg", "pos"]'
    out = subprocess.run(
        [sys.executable, "-c", "import alpha_pkg, beta_pkg; print(alpha_pkg.VALUE + beta_pkg.VALUE)"],
        env={**os.environ, "PYTHONPATH": str(stage / "site")}, capture_output=True, text=True,
    )  # fmt: skip
    assert out.stdout.strip() == "3"
    assert _install(parts[1], stage).returncode == 0  # a second run is a no-op
    assert json.loads((bundle / "manifest.json").read_text())["bytes"] > 1024


def test_a_corrupted_part_is_refused(bundle, tmp_path):
    parts = sorted(bundle.glob("part-*"))
    damaged = next(parts[1].glob("bundle.tar.part*"))
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    stage = tmp_path / "stage"
    results = [_install(part, stage).returncode for part in parts]
    assert results[-1] == 1 and not (stage / ".installed").exists()


def test_helpers_parse_sizes_match_wheels_and_pin_installed_versions():
    assert parse_size("60M") == 60 * 2**20 and parse_size("2048") == 2048
    with pytest.raises(ConfigError, match="size '6 apples'"):
        parse_size("6 apples")
    assert wheel_matches("huggingface_hub-0.36.2-py3-none-any.whl", "huggingface-hub==0.36.2")
    assert not wheel_matches("huggingface_hub-0.36.3-py3-none-any.whl", "huggingface-hub==0.36.2")
    import pytest as installed

    assert pinned(["pytest", "torch", "peft==0.1"], skip={"torch"}) == (
        f"pytest=={installed.__version__}", "peft==0.1",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="not installed here"):
        pinned(["surely-not-a-package-xyz"], skip=set())


def test_plan_refuses_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="part_size=10"):
        BundlePlan(out=tmp_path, requirements=(), python_version="3.12", platforms=(), part_size=10)
    with pytest.raises(ConfigError, match="python_version='312'"):
        BundlePlan(
            out=tmp_path, requirements=(), python_version="312", platforms=(), part_size=4096
        )
