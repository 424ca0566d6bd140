"""Builds are reproducible (issue 26): the same C source compiles to byte-identical
extension modules in two environments, so a head that changes only a comment of its C
code installs base's files and is not deblended."""

from __future__ import annotations

import shutil

import pytest

from runner.commands import main
from runner.commands.release_repo import commit
from runner.deblend import adapters
from runner.deblend.installed import record, site_packages
from runner.result import RunResult
from support import TINY_PYPROJECT, tiny_adapter

SETUP = """from setuptools import Extension, setup

setup(packages=["tinydeblender"], ext_modules=[
    Extension("tinydeblender._fast", ["tinydeblender/_fast.c"]),
])
"""
FAST = """#include <Python.h>

/* Where this module was compiled from, as the compiler sees it. */
static PyObject *where(PyObject *self, PyObject *args) {
    return PyUnicode_FromString(__FILE__);
}

static PyMethodDef methods[] = {{"where", where, METH_NOARGS, "source file"}, {NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fast(void) { return PyModule_Create(&module); }
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_a_comment_in_c_code_builds_byte_identical_extensions_and_is_not_deblended(
    tmp_path, synthetic_set, monkeypatch
):
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", tiny_adapter(tmp_path))
    repo = tmp_path / "repo"
    (repo / "tinydeblender").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(TINY_PYPROJECT)
    (repo / "setup.py").write_text(SETUP)
    (repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.0'\n")
    (repo / "tinydeblender" / "_fast.c").write_text(FAST)
    base = commit(repo, "a C extension", init=True)
    commented = FAST.replace("/* Where", "/* A comment, and nothing else, changed.\n * Where")
    (repo / "tinydeblender" / "_fast.c").write_text(commented)
    head = commit(repo, "a comment in the C code")
    out = tmp_path / "run"
    argv = ["run", "--repo", str(repo), "--head", head, "--base", base, "--adapter", "tiny",
            "--dataset", str(synthetic_set), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = RunResult.read(out / "result.json")
    modules = []
    for side in (result.provenance.base, result.provenance.head):
        env = tmp_path / "cache" / "envs" / side.build.environment
        root = site_packages(env)
        (so,) = [p for p in record(root, "tinydeblender") if p.endswith(".so")]
        modules.append((root / so).read_bytes())
    assert modules[0] == modules[1], "the same source, byte-identical extension modules"
    assert result.provenance.skipped.reason == "identical build"
    assert not list(out.glob("logs/worker-*.log"))
    assert result.comparison.verdict == "pass"
