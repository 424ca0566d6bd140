"""The compiler cache: a tiny deblender with a C extension, built by trusted revisions that
write the cache and by pull requests that only read it, whatever their setup.py tries."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from runner.commands import main
from runner.commands.release_repo import commit
from runner.deblend import adapters, compilecache
from runner.deblend.compilecache import CompilerCache
from runner.deblend.environments import build_environment
from runner.deblend.revisions import checkout, git
from runner.deblend.sandbox import isolation
from runner.result import RunResult
from runner.store import LocalStore
from support import TINY_PYPROJECT, tiny_adapter, two_blends

EXTENSION = """#include <Python.h>
static struct PyModuleDef module = {{PyModuleDef_HEAD_INIT, "_fast", NULL, -1, NULL}};
PyMODINIT_FUNC PyInit__fast(void) {{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "GAIN", {gain}) < 0) {{
        Py_DECREF(m);
        return NULL;
    }}
    return m;
}}
"""
SETUP = """from setuptools import Extension, setup
setup(ext_modules=[Extension("tinydeblender._fast", ["tinydeblender/_fast.c"])])
"""
# A pull request's setup.py that tries to write into the compiler cache: a file of its own
# and every entry there (to poison the objects of later builds); what it wrote, in its
# environment.
POISONING_SETUP = (
    """import json, pathlib, sys
cache = pathlib.Path({cache!r})
targets = [cache / "poison", *(p for p in sorted(cache.rglob("*")) if p.is_file())]
wrote = []
for path in targets:
    try:
        with open(path, "ab") as stream:
            stream.write(b"poison")
        wrote.append(str(path))
    except OSError:
        pass
attack = {{"tried": len(targets), "wrote": wrote}}
pathlib.Path(sys.prefix, "attack.json").write_text(json.dumps(attack))
"""
    + SETUP
)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def tiny_c(tmp_path):
    """A tiny deblender whose package holds a C extension, in a git repository; its adapter,
    the cache, and a function that builds a SHA behind the sandbox with a compiler cache."""
    repo = tmp_path / "repo"
    (repo / "tinydeblender").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(TINY_PYPROJECT)
    (repo / "setup.py").write_text(SETUP)
    (repo / "tinydeblender" / "_fast.c").write_text(EXTENSION.format(gain=1))
    (repo / "tinydeblender" / "__init__.py").write_text("from ._fast import GAIN\n")
    sha = commit(repo, "1.0", init=True)
    adapter, cache = tiny_adapter(tmp_path), tmp_path / "cache"
    sandbox = isolation(os.environ, [cache, adapter.lock], network=False)

    def build(sha: str, writable: bool):
        source = checkout(repo, sha, cache / "checkouts" / sha)
        compiler_cache = CompilerCache(cache / "ccache", writable)
        return build_environment(source, sha, adapter, cache, sandbox, compiler_cache)

    return repo, sha, cache, sandbox, build


@pytest.mark.skipif(shutil.which("ccache") is None, reason="needs ccache")
def test_trusted_builds_write_the_compiler_cache_and_pull_requests_only_read_it(tiny_c):
    repo, sha, cache, sandbox, build = tiny_c
    if sandbox.tool != "bwrap":
        pytest.skip(f"the file system cannot be made read-only here: {sandbox.describe()}")
    assert build(sha, writable=True).compiler_cache == "ccache: 0 hits, 1 miss (writable)"
    written = snapshot(cache / "ccache")
    assert written, "the trusted build wrote the cache"

    (repo / "tinydeblender" / "__init__.py").write_text("from ._fast import GAIN\nBIAS = 0\n")
    python_only = build(commit(repo, "a pull request that changes only Python"), writable=False)
    assert python_only.compiler_cache == "ccache: 1 hit, 0 misses (read-only)"

    (repo / "tinydeblender" / "_fast.c").write_text(EXTENSION.format(gain=2))
    (repo / "setup.py").write_text(POISONING_SETUP.format(cache=str(cache / "ccache")))
    poisoning = build(commit(repo, "a pull request that poisons the cache"), writable=False)
    assert poisoning.compiler_cache == "ccache: 0 hits, 1 miss (read-only)"
    attack = json.loads((poisoning.path / "attack.json").read_text())
    assert attack == {"tried": len(written) + 1, "wrote": []}
    assert snapshot(cache / "ccache") == written


@pytest.fixture
def runs(tiny_c, synthetic_set, tmp_path, monkeypatch):
    """The tiny C deblender's base (``main``) and a pull request that changes only Python;
    a function that runs the pull request against a base in a cache of its own (more
    arguments after) and returns base's and head's ``compiler_cache`` lines."""
    repo, base, _, _, _ = tiny_c
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", tiny_adapter(tmp_path))
    blends = two_blends(synthetic_set, tmp_path / "blends")
    git(repo, "checkout", "--quiet", "-b", "feature")
    (repo / "tinydeblender" / "__init__.py").write_text("from ._fast import GAIN\nBIAS = 0\n")
    head = commit(repo, "a pull request that changes only Python")

    def builds(base_rev: str, name: str, *more: str):
        out, cache = tmp_path / name, tmp_path / f"cache-{name}"
        args = ["run", "--repo", str(repo), "--head", head, "--base", base_rev, "--adapter", "tiny",
                "--dataset", str(blends), "--out", str(out), "--cache", str(cache),
                *more]  # fmt: skip
        assert main(args) == 0
        provenance = RunResult.read(out / "result.json").provenance
        return provenance.base.build.compiler_cache, provenance.head.build.compiler_cache

    return base, builds


@pytest.mark.skipif(shutil.which("ccache") is None, reason="needs ccache")
def test_a_run_trusts_a_base_given_as_a_branch_and_never_head(runs):
    base, builds = runs
    assert builds(base, "by-sha") == ("ccache: 0 hits, 1 miss (read-only)",) * 2
    assert builds("main", "by-branch") == (
        "ccache: 0 hits, 1 miss (writable)",
        "ccache: 1 hit, 0 misses (read-only)",
    )


def test_without_ccache_revisions_build_without_a_cache(tiny_c, monkeypatch):
    _, sha, cache, _, build = tiny_c
    which = shutil.which
    monkeypatch.setattr(
        compilecache.shutil,
        "which",
        lambda name, *a, **k: None if name == "ccache" else which(name, *a, **k),
    )
    env = build(sha, writable=True)
    assert env.compiler_cache == "no ccache on this machine: compiled without a cache"
    assert not (cache / "ccache").exists()


@pytest.mark.skipif(shutil.which("ccache") is None, reason="needs ccache")
def test_the_compiler_cache_a_trusted_base_wrote_travels_through_the_store(runs, tmp_path):
    base, builds = runs
    store = LocalStore(tmp_path / "store")
    shared = ("--store", str(store.root), "--repository", "octo/scarlet")
    assert builds("main", "trusted", *shared)[0] == "ccache: 0 hits, 1 miss (writable)"
    (key,) = store.list("ccache/")
    stored = store.stat(key).version, store.get(key)
    # Another machine, its cache empty (at another path, so no stored environment serves
    # it), with nothing trusted: both build read-only through the cache fetched first.
    assert builds(base, "untrusted", *shared) == ("ccache: 1 hit, 0 misses (read-only)",) * 2
    assert (store.stat(key).version, store.get(key)) == stored, "untrusted builds upload nothing"
