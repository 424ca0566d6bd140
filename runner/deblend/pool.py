"""Worker processes and the pool that spreads blends over them.

Each slot of the pool (one per core by default) runs blends one at a time, starting
a persistent worker per revision with that revision's own interpreter. Tasks come in
the order given, so base and head of a blend interleave and machine drift cancels in
timing comparisons; with two or more slots, each slot keeps to one revision where it
can, so base and head of a blend run side by side. Workers see a scrubbed environment
and run behind their side's sandbox (``runner.deblend.sandbox``: no network, no secret files, and
where the machine allows it nothing writable but their own scratch folder and their
side's ``writable`` folders). A worker writes its arrays into its scratch folder; the pool
copies them to the task's ``out`` (a regular file only), where no worker can write. A
crash, a hang past the timeout or a deblender exception errors that task only: the worker
is replaced and the other tasks go on.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from runner.deblend.sandbox import Isolation

WORKER_SCRIPT = Path(__file__).parent / "worker" / "worker.py"
STARTUP_TIMEOUT = 300.0
MEMORY_CHECK_INTERVAL = 0.25  # seconds between looks at a busy worker's memory
STDERR_TAIL_LINES = 12
SWITCH_AT = 8  # tasks of another revision waiting before an idle slot takes them on
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
# What a worker may see of the parent's environment; everything else is scrubbed.
PASSED_VARIABLES = ("PATH", "LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _resident(pid: int) -> int | None:
    """Resident memory of one process in bytes (Linux ``/proc``), None where unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def _children() -> dict[int, list[int]]:
    """Every process's children, by parent pid."""
    children: dict[int, list[int]] = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(path.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(path.parent.name))
    return children


def resident_memory(pid: int) -> int | None:
    """Resident memory in bytes of a process and everything it started (a sandbox's
    worker is its grandchild), None where unknown."""
    total = _resident(pid)
    if total is None:
        return None
    children = _children()
    pending = list(children.get(pid, []))
    while pending:
        child = pending.pop()
        total += _resident(child) or 0
        pending += children.get(child, [])
    return total


class WorkerError(RuntimeError):
    """A worker that crashed or hung."""


class WorkerStartError(WorkerError):
    """A worker that could not import its deblender: every later task would fail too;
    ``reply`` the worker's account of it, where it gave one (its traceback, and whether
    the adapter's code or the deblender's raised it)."""

    def __init__(self, message: str, reply: dict | None = None):
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class Side:
    """How to start workers for one revision."""

    name: str
    python: Path
    adapter_file: Path
    environment: dict[str, str] = field(default_factory=dict)
    memory_limit: int | None = None  # bytes of resident memory a worker may use
    sandbox: Isolation | None = None  # how a worker is isolated (runner.deblend.sandbox)
    writable: tuple[Path, ...] = ()  # folders its workers may write beyond their scratch


@dataclass(frozen=True)
class Task:
    """Deblend ``blend`` with the revision ``side`` and write its arrays to ``out``."""

    side: str
    blend: Path
    out: Path
    options: dict


@dataclass(frozen=True)
class Outcome:
    """What became of a task: the worker's reply, or the reason it failed."""

    task: Task
    reply: dict | None
    error: str | None
    wall: float


def worker_environment(side: Side, home: Path) -> dict[str, str]:
    """A scrubbed environment: single-threaded numerics, no credentials of ours, the
    worker's scratch folder ``home`` as home and temporary folder."""
    env = {key: os.environ[key] for key in PASSED_VARIABLES if key in os.environ}
    env.update({key: "1" for key in THREAD_VARIABLES})
    env.update(HOME=str(home), TMPDIR=str(home), PYTHONHASHSEED="0")
    env.update(side.environment)
    return env


LIVE_WORKERS: set[Worker] = set()


def kill_all_workers() -> None:
    """Kill every worker process (their own sessions outlive the runner otherwise)."""
    for worker in list(LIVE_WORKERS):
        worker.kill()


class Worker:
    """One persistent worker process speaking the line protocol of ``worker.py``, in its
    own scratch folder ``home``."""

    def __init__(self, side: Side, log: Path, home: Path):
        self.side = side
        self.log = log
        self.home = home
        self.process: subprocess.Popen | None = None
        self._buffer = b""

    def start(self) -> None:
        """Start the process and wait until the deblender is imported."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as stderr:
            command = [str(self.side.python), "-I", str(WORKER_SCRIPT), str(self.side.adapter_file)]
            sandbox = self.side.sandbox
            prefix = sandbox.prefix([self.home, *self.side.writable]) if sandbox else ()
            self.process = subprocess.Popen(
                [*prefix, *command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=worker_environment(self.side, self.home),
                cwd=self.home,
                start_new_session=True,
            )
        LIVE_WORKERS.add(self)
        self._buffer = b""
        try:
            ready = json.loads(self._read_line(time.monotonic() + STARTUP_TIMEOUT, "starting"))
        except WorkerError as error:
            raise WorkerStartError(f"worker could not start: {error}") from None
        if not ready.get("ready"):
            self.stop()
            error = ready.get("error", "unknown error")
            raise WorkerStartError(f"worker could not load its adapter: {error}", ready)

    def run(self, request: dict, timeout: float) -> dict:
        """Send one request and wait at most ``timeout`` seconds for its reply."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(self._death("the worker died")) from None
        return json.loads(self._read_line(time.monotonic() + timeout, "deblending"))

    def _read_line(self, deadline: float, doing: str) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise WorkerError(f"timed out while {doing}")
                if not selector.select(min(remaining, MEMORY_CHECK_INTERVAL)):
                    self._check_memory(doing)
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise WorkerError(self._death(f"the worker exited while {doing}"))
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _check_memory(self, doing: str) -> None:
        """Kill a worker whose resident memory passed the side's limit."""
        limit = self.side.memory_limit
        if limit is None or self.process is None:
            return
        used = resident_memory(self.process.pid)
        if used is not None and used > limit:
            self.kill()
            raise WorkerError(
                f"used {used / 2**20:.0f} MiB while {doing}, over the limit of "
                f"{limit / 2**20:.0f} MiB"
            )

    def _death(self, what: str) -> str:
        assert self.process is not None
        code = self.process.wait()
        reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        lines = self.log.read_text(errors="replace").splitlines()[-STDERR_TAIL_LINES:]
        tail = "\n".join(lines)
        return f"{what} ({reason})" + (f"; stderr:\n{tail}" if tail else "")

    def kill(self) -> None:
        """Kill the worker and everything it started."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Close stdin so the worker ends by itself; kill it if it does not."""
        if self.process is None:
            return
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.process.stdout:
            self.process.stdout.close()
        LIVE_WORKERS.discard(self)
        self.process = None


class TaskQueue:
    """Tasks in their given order, where a slot takes the next task for a revision whose
    worker it already runs: with as many slots as revisions each slot keeps to one
    revision and no worker imports a deblender only to idle. A slot left with nothing for
    its revision takes another's once ``SWITCH_AT`` tasks wait (when base's outcomes are
    reused, head has nearly all the work); for fewer, starting a worker costs more than
    it saves."""

    def __init__(self, tasks: Iterable[Task]):
        self.tasks = list(tasks)
        self.lock = threading.Lock()

    def take(self, preferred: set[str], only_preferred: bool) -> Task | None:
        """The next task, preferring one for a side in ``preferred`` (only such a task
        with ``only_preferred``); None when there is none."""
        with self.lock:
            index = next((i for i, t in enumerate(self.tasks) if t.side in preferred), None)
            if index is None:
                if not self.tasks or (only_preferred and len(self.tasks) < SWITCH_AT):
                    return None
                index = 0
            return self.tasks.pop(index)


def run_tasks(
    tasks: Iterable[Task],
    sides: dict[str, Side],
    workdir: Path,
    slots: int,
    timeout: float,
    on_outcome: Callable[[Outcome], None],
) -> None:
    """Run every task on ``slots`` parallel slots; report each outcome as it comes."""
    pending = TaskQueue(tasks)
    report = threading.Lock()
    broken: dict[str, WorkerStartError] = {}

    def slot(number: int) -> None:
        workers = {
            name: Worker(
                side,
                workdir / f"worker-{number}-{name}.log",
                workdir / "scratch" / f"{number}-{name}",
            )
            for name, side in sides.items()
        }
        try:
            while True:
                # A slot that runs a worker leaves the other revisions' tasks to the
                # slots running theirs, unless it is the only slot.
                started = {name for name, worker in workers.items() if worker.process}
                preferred = started or {list(sides)[number % len(sides)]}
                task = pending.take(preferred, only_preferred=bool(started) and slots > 1)
                if task is None:
                    return
                if task.side not in started:  # switching: the idle workers go
                    for name in started:
                        workers[name].stop()
                outcome = _run_one(task, workers[task.side], timeout, broken)
                with report:
                    on_outcome(outcome)
        finally:
            for worker in workers.values():
                worker.stop()

    threads = [threading.Thread(target=slot, args=(n,), daemon=True) for n in range(slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _run_one(
    task: Task, worker: Worker, timeout: float, broken: dict[str, WorkerStartError]
) -> Outcome:
    if task.side in broken:
        return Outcome(task, broken[task.side].reply, str(broken[task.side]), 0.0)
    started = time.perf_counter()
    arrays = worker.home / "arrays.npz"
    arrays.unlink(missing_ok=True)  # what an earlier task left is no answer to this one
    request = {"blend": str(task.blend), "out": str(arrays), "options": task.options}
    try:
        reply = worker.run(request, timeout)
    except WorkerStartError as error:
        broken[task.side] = error
        return Outcome(task, error.reply, str(error), time.perf_counter() - started)
    except WorkerError as error:
        return Outcome(task, None, str(error), time.perf_counter() - started)
    wall = time.perf_counter() - started
    if not reply.get("ok"):
        return Outcome(task, reply, reply.get("error", "unknown worker error"), wall)
    try:
        collect(arrays, task.out)
    except OSError as error:
        return Outcome(task, reply, f"the worker's arrays cannot be collected: {error}", wall)
    return Outcome(task, reply, None, wall)


def collect(arrays: Path, out: Path) -> None:
    """Copy the file a worker wrote to ``out`` and remove it, refusing anything but a
    regular file (a symbolic link would have us copy what it points to, a pipe block)."""
    fd = os.open(arrays, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{arrays.name} is not a regular file")
        with open(out, "wb") as target:
            shutil.copyfileobj(source, target)
    arrays.unlink()
