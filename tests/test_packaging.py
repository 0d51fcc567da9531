"""A built wheel installs `kcompile`, `kcompile.passes`, `kcompile.runtime` and the grammar, and
its console script runs; nothing installs a top-level `passes` or `runtime` package."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (path,) = out.glob("kcompile-*.whl")
    return path


@pytest.mark.slow
def test_wheel_layout(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("kcompile-")}
    assert tops == {"kcompile"}
    assert "kcompile/passes/__init__.py" in names and "kcompile/runtime/__init__.py" in names
    for lark in glob.glob(str(ROOT / "grammar" / "*.lark")):
        assert f"kcompile/grammar/{os.path.basename(lark)}" in names
    # Every package of the source tree is in the wheel, wherever pyproject maps it from.
    sources = {"kcompile": ROOT / "kcompile", "kcompile/passes": ROOT / "passes", "kcompile/runtime": ROOT / "runtime"}
    for prefix, folder in sources.items():
        for init in folder.rglob("__init__.py"):
            rel = init.relative_to(folder).as_posix()
            assert f"{prefix}/{rel}" in names, f"{prefix}/{rel} is missing from the wheel"


@pytest.mark.slow
def test_clean_wheel_install_imports_and_runs_cli(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    # Run from an empty directory with only the installed copy of kcompile on the path first.
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    code = (
        "import kcompile, kcompile.passes, kcompile.runtime, sys;"
        "paths = [kcompile.__file__, kcompile.passes.__file__, kcompile.runtime.__file__];"
        f"assert all(p.startswith({str(site)!r}) for p in paths), paths;"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    cli = subprocess.run(
        [sys.executable, "-m", "kcompile", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr
    assert "--emit" in cli.stdout and "--learning-phase" in cli.stdout
    script = site / "bin" / "kcompile"
    assert script.exists()
    ran = subprocess.run(
        [sys.executable, str(script), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0 and ran.stdout.startswith("kcompile ")
