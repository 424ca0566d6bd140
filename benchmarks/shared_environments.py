"""What sharing a built environment through the store costs, against building it.

    python benchmarks/shared_environments.py ENV_DIR [--store SPEC]

ENV_DIR is a built environment in a cache (``<cache>/envs/<key>``, with its
``environment.json``, e.g. after ``python -m runner run``). For each codec whose command is
installed, packs it, uploads it to the store (a fresh local folder unless ``--store``
names one, e.g. ``gs://bucket/prefix`` with ``STORAGE_EMULATOR_HOST``), downloads it and
unpacks it at ENV_DIR's own path (the environment is moved aside meanwhile and put back
after), checks that its interpreter imports what the environment holds, and prints
seconds and sizes beside the environment's own build time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from runner.deblend.environments import COMPLETE_MARKER
from runner.deblend.shared import CODECS, pack, unpack
from runner.store import open_store


def timed(function, *args) -> float:
    """Seconds ``function(*args)`` takes."""
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", type=Path, help="a built environment: <cache>/envs/<key>")
    parser.add_argument("--store", help="a store spec (default: a fresh local folder)")
    args = parser.parse_args()
    env = args.env.resolve()
    info = json.loads((env / COMPLETE_MARKER).read_text())
    size = sum(p.lstat().st_size for p in env.rglob("*"))
    files = sum(1 for _ in env.rglob("*"))
    print(f"{env}: {size / 1e6:.0f} MB in {files} files, built in {info['build_seconds']} s")
    with tempfile.TemporaryDirectory(dir=env.parent) as tmp:
        store = open_store(args.store or str(Path(tmp) / "store"))
        for codec in (c for c in CODECS if shutil.which(c.pack[0])):
            archive, back, tree = (Path(tmp) / f"{n}{codec.suffix}" for n in ("a", "b", "t"))
            key = f"environments/benchmark/{env.name}{codec.suffix}"
            packing = timed(pack, env, archive, codec)
            upload = timed(store.put_file, key, archive, codec.content_type)
            download = timed(store.get_file, key, back)
            aside = env.with_name(env.name + ".aside")
            env.rename(aside)
            try:
                unpacking = timed(unpack, back, tree, env, codec)
                tree.rename(env)
                module = Path(info["file"]).parent.name
                subprocess.run([env / "bin" / "python", "-c", f"import {module}"], check=True)
            finally:
                shutil.rmtree(env, ignore_errors=True)
                aside.rename(env)
            store.delete(key)
            print(
                f"  {codec.suffix}: {archive.stat().st_size / 1e6:.0f} MB; pack {packing:.1f} s,"
                f" upload {upload:.1f} s, download {download:.1f} s, unpack {unpacking:.1f} s"
            )


if __name__ == "__main__":
    main()
