"""What ``pip install`` puts on the path: ``nnx`` and its subpackages ``nnx.backends`` and
``nnx.benchmarks`` (the repository's backends/ and benchmarks/ folders), never the generic
top-level names ``backends`` or ``benchmarks`` (issue 14, packaging)."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

_CHECK = (
    "import importlib.util, sys\n"
    "import nnx, nnx.backends, nnx.benchmarks\n"
    "from nnx.backends import get_backend\n"
    "assert nnx.tensor([1.0])._backend is get_backend('cpu')\n"
    "for name in ('backends', 'benchmarks'):\n"
    "    assert importlib.util.find_spec(name) is None, name + ' is importable at the top level'\n"
    "print(nnx.backends.__file__)\n"
)


def _run(code, cwd, env=None):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_installed_nnx_brings_its_backends_under_its_own_name(tmp_path):
    # This interpreter's nnx (the editable install CI makes, or a regular one), from a folder
    # that is not the checkout: nnx.backends works, a top-level "backends" does not exist.
    r = _run(_CHECK, tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout


def test_a_regular_install_has_no_top_level_backends(tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
                        "--target", str(target), str(ROOT)], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0 and ("Could not find a version" in r.stderr or "network" in r.stderr.lower()):
        pytest.skip(f"pip could not fetch the build backend: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    assert (target / "nnx" / "backends" / "base.py").is_file()
    assert (target / "nnx" / "benchmarks" / "cli.py").is_file()
    assert not (target / "backends").exists() and not (target / "benchmarks").exists()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = _run(_CHECK, work, env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert str(target) in r.stdout
