"""A fake of Cloud Run's Admin API (REST, v2) that really runs its executions.

``POST .../jobs/J:run`` starts one local process per execution: ``entrypoint`` (the
image's, e.g. the tiny runner) plus the override's args, with the override's environment
over this process's, and its ``--out`` moved to a folder of its own (the container's
disk). ``GET .../executions/E`` answers as Cloud Run does: running until the process
ends, then ``completionTime`` with ``succeededCount`` or ``failedCount`` (and the exit
code in a condition). ``POST .../executions/E:cancel`` kills the process. Executions go
on whatever happens to the bot that started them, as on Cloud Run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class FakeCloudRun:
    """The fake's state: where executions run, and each one's process."""

    entrypoint: Sequence[str]
    folder: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    finished: dict[str, str] = field(default_factory=dict)
    endpoint: str = ""
    _count: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, job: str, body: dict) -> dict:
        """Start an execution of ``job`` with the request's overrides; its resource."""
        overrides = body.get("overrides", {})
        (container,) = overrides.get("containerOverrides", [{}])
        with self._lock:
            name = f"{job}/executions/run-{next(self._count)}"
        out = self.folder / name.rsplit("/", 1)[1]
        args = list(container.get("args", []))
        if "--out" in args:
            args[args.index("--out") + 1] = str(out / "out")
        env = {**os.environ, **{v["name"]: v["value"] for v in container.get("env", [])}}
        out.mkdir(parents=True)
        with (out / "log").open("wb") as log:
            process = subprocess.Popen(
                [*self.entrypoint, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return {"name": name}

    def execution(self, name: str) -> dict:
        """The execution as ``GET`` answers it."""
        process = self.processes[name]
        data = {"name": name, "taskCount": 1}
        code = process.poll()
        if code is None:
            return data | {"runningCount": 1}
        done = self.finished.setdefault(name, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if code == 0:
            return data | {"completionTime": done, "succeededCount": 1}
        message = f"Task {name.rsplit('/', 1)[1]} exited with code {code}"
        condition = {"type": "Completed", "message": message}
        return data | {"completionTime": done, "failedCount": 1, "conditions": [condition]}

    def cancel(self, name: str) -> dict:
        """Stop the execution's process."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.processes[name].pid, signal.SIGTERM)
        return {"name": name}

    def stop(self) -> None:
        """Kill what still runs."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _handler(fake: FakeCloudRun) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = urlsplit(self.path).path.removeprefix("/v2/")
            if name not in fake.processes:
                self.answer(404, {"error": {"code": 404, "message": f"{name} not found"}})
                return
            self.answer(200, fake.execution(name))

        def do_POST(self) -> None:
            path = urlsplit(self.path).path.removeprefix("/v2/")
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            resource, _, verb = path.rpartition(":")
            execution = fake.run(resource, body) if verb == "run" else fake.cancel(resource)
            metadata = {"@type": "type.googleapis.com/google.cloud.run.v2.Execution"}
            operation = {"name": f"{resource}/operations/op", "done": False}
            self.answer(200, operation | {"metadata": metadata | execution})

        def answer(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    return Handler


def serve(fake: FakeCloudRun) -> ThreadingHTTPServer:
    """Serve ``fake`` on 127.0.0.1 (a free port, set as ``fake.endpoint``) from a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.endpoint = f"http://127.0.0.1:{server.server_port}"
    return server
