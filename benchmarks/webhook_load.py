"""Load on the webhook endpoint: 200 signed deliveries a second for 60 s, on 127.0.0.1.

    python benchmarks/webhook_load.py [--rate 200] [--seconds 60] [--repeat 0.05]
                                      [--event pull_request|push]

Starts the bot (``python -m bot``) in its own process against a stub GitHub, then sends
deliveries, a share ``--repeat`` of them redeliveries of an earlier delivery id:
``pull_request`` ``synchronize`` (the default: verified, de-duplicated, routed, and the
PR read from GitHub after the answer, as every push is; the stub's PR is at another
head, so the delivery is stale and runs nothing), or ``push`` to a branch that is not
the default one (no GitHub call but the token). Prints p50 and p99 latency, errors
(non-2xx or failed requests), how many PR reads the stub answered, and how many
redeliveries were accepted as new: a delivery id answered 202 more than once, which
would be a duplicate run (a redelivery of one first answered with an error is rightly
accepted). Goal: p99 <= 50 ms, 0 errors, 0 duplicates. Bounded: it stops after
``--seconds`` by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SECRET = "load-test-secret"


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


REPOSITORY = {
    "full_name": "octo/scarlet",
    "clone_url": "https://example.invalid/octo/scarlet.git",
    "default_branch": "main",
}


class StubGitHub:
    """Answers installation tokens and PR reads (each PR open at a head no delivery
    names), counting the reads (``GET /reads``). It runs in a process of its own
    (``--stub-github PORT``), so that neither it nor the load shares the other's CPU."""

    def __init__(self) -> None:
        self.reads = 0

    async def token(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"token": "ghs_load", "expires_at": "2099-01-01T00:00:00Z"}, status=201
        )

    async def pull(self, request: web.Request) -> web.Response:
        self.reads += 1
        number = int(request.match_info["number"])
        now = pull_request(number, "f" * 40) | {"updated_at": "2099-01-01T00:00:00Z"}
        return web.json_response(now)

    async def count(self, request: web.Request) -> web.Response:
        return web.json_response({"reads": self.reads})

    async def serve(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/app/installations/{id}/access_tokens", self.token)
        app.router.add_get("/repos/{owner}/{repo}/pulls/{number}", self.pull)
        app.router.add_get("/reads", self.count)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()


def pull_request(number: int, sha: str) -> dict:
    """A pull request as a payload or GitHub's API has it (the parts the bot reads)."""
    side = {"repo": {"full_name": REPOSITORY["full_name"]}}
    return {
        "number": number,
        "state": "open",
        "draft": False,
        "updated_at": "2026-01-01T00:00:00Z",
        "head": {"sha": sha, "ref": f"branch-{number}", **side},
        "base": {"sha": "0" * 40, "ref": "main", **side},
    }


def delivery(delivery_id: str, number: int, event: str = "pull_request") -> tuple[dict, bytes]:
    if event == "push":
        data = {"ref": "refs/heads/load-test", "before": "0" * 40, "after": f"{number:040x}"}
    else:
        data = {"action": "synchronize", "pull_request": pull_request(number, f"{number:040x}")}
    data |= {"repository": REPOSITORY, "installation": {"id": 1}}
    body = json.dumps(data).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id,
        "X-Hub-Signature-256": signature,
    }
    return headers, body


async def load(url: str, rate: float, seconds: float, repeat: float, event: str) -> None:
    latencies: list[float] = []
    errors = repeats = 0
    accepted: Counter[str] = Counter()
    sent: list[str] = []
    rng = random.Random(0)

    async def send(session: aiohttp.ClientSession, number: int) -> None:
        nonlocal errors, repeats
        is_repeat = bool(sent) and rng.random() < repeat
        delivery_id = rng.choice(sent) if is_repeat else str(uuid.uuid4())
        if is_repeat:
            repeats += 1
        else:
            sent.append(delivery_id)
        headers, body = delivery(delivery_id, number % 1000 + 1, event)
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            errors += 1
            return
        latencies.append(time.perf_counter() - started)
        if status >= 300:
            errors += 1
        elif status == 202:
            accepted[delivery_id] += 1

    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        start = time.perf_counter()
        for number in range(int(rate * seconds)):
            delay = start + number / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, number)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan")
    print(
        f"{len(tasks)} deliveries in {elapsed:.1f} s ({len(tasks) / elapsed:.0f}/s), "
        f"{repeats} redeliveries"
    )
    print(
        f"latency p50 {statistics.median(latencies) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms"
        "  (goal p99 <= 50 ms)"
    )
    print(f"errors {errors}  (goal 0)")
    duplicates = sum(count - 1 for count in accepted.values())
    print(f"redeliveries accepted as new: {duplicates}  (goal 0)")


async def run(
    rate: float,
    seconds: float,
    repeat: float,
    env: dict[str, str],
    event: str = "pull_request",
    others: dict[str, int] | None = None,
) -> None:
    """Start the bot (with ``env`` over its settings) and a stub GitHub, and load it;
    print the CPU time per delivery of the bot and of ``others`` (name: pid), and the
    machine's load average."""
    github_port, bot_port = free_port(), free_port()
    github = subprocess.Popen(
        [sys.executable, __file__, "--stub-github", str(github_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "GITHUB_APP_ID": "1",
            "GITHUB_APP_PRIVATE_KEY": key.decode(),
            "GITHUB_WEBHOOK_SECRET": SECRET,
            "GITHUB_API_URL": f"http://127.0.0.1:{github_port}",
            "SCARLET_BOT_DATASETS": tmp,
            "SCARLET_BOT_DATA": str(Path(tmp) / "bot"),
            "PORT": str(bot_port),
            **env,
        }
        bot = subprocess.Popen(
            [sys.executable, "-m", "bot"], env=env, stderr=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{bot_port}"
            stub = f"http://127.0.0.1:{github_port}"
            async with aiohttp.ClientSession() as session:
                for address in (f"{url}/healthz", f"{stub}/reads"):
                    for _ in range(100):
                        try:
                            async with session.get(address) as response:
                                if response.status == 200:
                                    break
                        except aiohttp.ClientError:
                            pass
                        await asyncio.sleep(0.1)
            pids = {"bot": bot.pid, "stub GitHub": github.pid, **(others or {})}
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            await load(f"{url}/webhook", rate, seconds, repeat, event)
            await asyncio.sleep(1.0)  # the last deliveries' work, after their answers
            if event == "pull_request":
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{stub}/reads") as response,
                ):
                    reads = (await response.json())["reads"]
                print(f"PRs read from GitHub after the answer: {reads}")
            deliveries = rate * seconds
            used = ", ".join(
                f"{name} {(cpu_seconds(pid) - before[name]) / deliveries * 1e3:.1f} ms"
                for name, pid in pids.items()
            )
            load_average = ", ".join(f"{value:.1f}" for value in os.getloadavg())
            print(f"CPU per delivery: {used}; machine load average {load_average}")
        finally:
            bot.terminate()
            bot.wait(timeout=10)
            github.terminate()
            github.wait(timeout=10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=float, default=0.05)
    parser.add_argument("--event", choices=["pull_request", "push"], default="pull_request")
    parser.add_argument("--stub-github", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stub_github:
        await StubGitHub().serve(args.stub_github)
    await run(args.rate, args.seconds, args.repeat, {}, args.event)


if __name__ == "__main__":
    asyncio.run(main())
