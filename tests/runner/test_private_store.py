"""Two buckets: what reports link goes to the public one (``--store``), what is the
runner's own (shared environments, outcomes, the compiler cache, shard partials) to the
private one (``--private-store``). A sharded run of a pull request on the GCS emulator
leaves nothing private in the public bucket."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from runner.commands import main
from runner.deblend.revisions import git
from runner.result import RunResult
from support import tiny_pull_request, tiny_repository, two_blends

TINY_RUNNER = Path(__file__).parents[1] / "support" / "tiny_runner.py"
REPOSITORY = "octo/scarlet"


def test_a_sharded_runs_private_parts_stay_out_of_the_public_bucket(
    synthetic_set, tmp_path, gcs_emulator, gcs_client, monkeypatch
):
    public, private = (gcs_client.create_bucket(f"{kind}-{uuid.uuid4().hex[:12]}") for kind in "pq")
    stores = ["--store", f"gs://{public.name}/p", "--private-store", f"gs://{private.name}/q"]
    stores += ["--repository", REPOSITORY, "--pr", "4"]
    repo, main_sha = tiny_repository(tmp_path / "scarlet")
    head = tiny_pull_request(repo)  # models 0.1 % brighter: residual images
    dataset = two_blends(synthetic_set, tmp_path / "blends")
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint}
    for index in range(2):  # the two tasks of a sharded run
        argv = [sys.executable, str(TINY_RUNNER), "run", "--repo", str(repo), "--head", head,
                "--base", "refs/heads/main", "--base-sha", main_sha, "--dataset", str(dataset),
                "--out", str(tmp_path / f"out-{index}"), "--cache", str(tmp_path / "cache"),
                "--workers", "1", "--shard", f"{index}/2", *stores]  # fmt: skip
        ran = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, ran.stderr
    first = RunResult.read(tmp_path / "out-0" / "result.json").provenance
    assert first.base.rev == "refs/heads/main" and first.base.sha == main_sha

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    merged = tmp_path / "merged"
    assert main(["merge", "--out", str(merged), "--sha", head, "--shards", "2", *stores]) == 0
    assert len(RunResult.read(merged / "result.json").blends) == 2

    run = rf"runs/pr/octo/scarlet/4/{head}/"
    linked = re.compile(
        rf"p/(images/[0-9a-f]{{64}}\.png|{run}(result\.json|published\.json|report/report\.html)"
        r"|history/octo/scarlet\.jsonl)"
    )
    names = [blob.name for blob in public.list_blobs()]
    assert [name for name in names if not linked.fullmatch(name)] == []
    assert any(name.startswith("p/images/") for name in names)
    published = json.loads((merged / "published.json").read_text())
    addresses = [published["result"], published["report"], *published["images"].values()]
    assert all(public.name in url and private.name not in url for url in addresses)

    kept = [blob.name for blob in private.list_blobs()]
    assert any(re.fullmatch(r"q/environments/\w+/\w+\.tar\.(zst|gz)", name) for name in kept)
    assert any(name.startswith(f"q/{run}shards/0-of-2/") for name in kept)
    assert not [name for name in kept if not name.startswith("q/")]
    assert git(repo, "rev-parse", "refs/heads/main") == main_sha
