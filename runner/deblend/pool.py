"""Worker processes and the pool that spreads blends over them.

Each slot of the pool (one per core by default) runs blends one at a time, starting
a persistent worker per revision with that revision's own interpreter. Tasks come in
the order given; consecutive tasks of one blend (base and head, alternated by the caller)
run on the same slot one after the other, so both sides of a blend are timed on the same
core under the same load, and a busy machine slows both alike. Workers see a scrubbed environment
and run behind their side's sandbox (``runner.deblend.sandbox``): they see their own
environment, the worker script and its adapter read-only, and write only their own scratch
folder and their side's ``writable`` folders. They never see a blend file: before each
request the pool writes the blend's inputs alone (:data:`INPUT_KEYS`: images, variance,
footprint, PSFs, detected centres; never the injected sources' truth) into the worker's
scratch folder. A worker writes its arrays there too; the pool copies them to the task's
``out`` (a regular file only), where no worker can write. The pool times every request
itself: wall time around it, and CPU time as the kernel counts it for the worker's
processes (``/proc/<pid>/stat``, before and after), never what the worker says. A crash, a
hang past the timeout or a deblender exception errors that task only: the worker is
replaced and the other tasks go on.
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
import zipfile
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from runner.deblend.logs import read_tail
from runner.deblend.sandbox import Isolation

WORKER_SCRIPT = Path(__file__).parent / "worker" / "worker.py"
STARTUP_TIMEOUT = 300.0
MEMORY_CHECK_INTERVAL = 0.25  # seconds between looks at a busy worker's memory
STDERR_TAIL_LINES = 12
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
INPUT_KEYS = ("images", "variance", "footprint", "psfs", "centers")  # what a worker is given
INPUTS = "blend.npz"  # the inputs' name in a worker's scratch folder
ARRAYS_LIMIT = 256 * 2**20  # bytes of arrays a worker may return for one blend
TICKS = os.sysconf("SC_CLK_TCK")
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


def _cpu(pid: int) -> float:
    """CPU seconds (user and system, its waited-for children's included) of one process,
    0 where it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(value) for value in fields[11:15]) / TICKS


def _tree(pid: int) -> list[int]:
    """A process and everything it started."""
    found, pending, scanned = [], [pid], None
    while pending:
        process = pending.pop()
        found.append(process)
        children = _children_of(process)
        if children is None:  # a kernel without the children files: scan every process
            scanned = scanned if scanned is not None else _children()
            children = scanned.get(process, [])
        pending += children
    return found


def _children_of(pid: int) -> list[int] | None:
    """The children of one process, from its threads' ``children`` files (None where the
    kernel has none; a process that is gone has none)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children = []
    for task in tasks:
        try:
            children += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except FileNotFoundError:
            if Path(f"/proc/{pid}/task/{task}").exists():
                return None
        except (OSError, ValueError):
            continue
    return children


def cpu_time(pid: int) -> float:
    """CPU seconds the kernel counted for a process and everything it started (a
    sandbox's worker is its grandchild)."""
    return sum(_cpu(p) for p in _tree(pid))


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
    return total + sum(_resident(child) or 0 for child in _tree(pid)[1:])


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
    readable: tuple[Path, ...] = ()  # folders its workers may read beyond their environment


@dataclass(frozen=True)
class Task:
    """Deblend ``blend`` with the revision ``side`` and write its arrays to ``out``."""

    side: str
    blend: Path
    out: Path
    options: dict


@dataclass(frozen=True)
class Outcome:
    """What became of a task: the worker's reply, or the reason it failed; ``wall`` and
    ``cpu`` the seconds the pool measured (``cpu`` None where the request did not end
    with a reply), ``slot`` where it ran."""

    task: Task
    reply: dict | None
    error: str | None
    wall: float
    cpu: float | None = None
    slot: int = 0


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
            side = self.side
            command = [str(side.python), "-I", str(WORKER_SCRIPT), str(side.adapter_file)]
            prefix = ()
            if side.sandbox is not None:
                env = Path(side.python).parent.parent
                seen = [env, WORKER_SCRIPT, side.adapter_file, *side.readable]
                writable = [self.home, *side.writable]
                prefix = side.sandbox.prefix(writable, seen, owner=f"worker-{env.name}")
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
        except ValueError:
            ready = None
        if not isinstance(ready, dict):
            self.stop()
            raise WorkerStartError("worker could not start: it announced itself in no JSON object")
        if not ready.get("ready"):
            self.stop()
            error = ready.get("error", "unknown error")
            raise WorkerStartError(f"worker could not load its adapter: {error}", ready)

    def ensure_started(self) -> None:
        """Start the worker unless it runs."""
        if self.process is None or self.process.poll() is not None:
            self.start()

    def cpu(self) -> float:
        """CPU seconds its processes have used so far."""
        assert self.process is not None
        return cpu_time(self.process.pid)

    def run(self, request: dict, timeout: float) -> dict:
        """Send one request and wait at most ``timeout`` seconds for its reply."""
        self.ensure_started()
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
        sandbox = self.side.sandbox
        if sandbox is not None and sandbox.tool == "bwrap":
            limit = sandbox.limits.file_size
            with suppress(OSError):
                if self.log.stat().st_size >= limit:
                    reason += f"; its output reached the size limit of {limit / 2**20:g} MiB"
        tail = read_tail(self.log, STDERR_TAIL_LINES)
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
    """Tasks in their given order, consecutive tasks of one blend as one unit: a slot takes
    a whole unit, so base and head of a blend (and the repetitions of a re-timing) run
    on the same slot, alternated as the caller ordered them."""

    def __init__(self, tasks: Iterable[Task]):
        self.units: list[list[Task]] = []
        for task in tasks:
            if self.units and self.units[-1][0].blend == task.blend:
                self.units[-1].append(task)
            else:
                self.units.append([task])
        self.lock = threading.Lock()

    def take(self) -> list[Task] | None:
        """The next unit, None when none is left."""
        with self.lock:
            return self.units.pop(0) if self.units else None


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
            while (unit := pending.take()) is not None:
                for task in unit:
                    outcome = _run_one(task, workers[task.side], timeout, broken, number)
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
    task: Task, worker: Worker, timeout: float, broken: dict[str, WorkerStartError], slot: int
) -> Outcome:
    """Run one task on ``worker`` (started first, so that its start is not timed)."""
    if task.side in broken:
        error = broken[task.side]
        return Outcome(task, error.reply, str(error), 0.0, None, slot)
    try:
        worker.ensure_started()
    except WorkerStartError as error:
        broken[task.side] = error
        return Outcome(task, error.reply, str(error), 0.0, None, slot)
    arrays, inputs = worker.home / "arrays.npz", worker.home / INPUTS
    try:
        arrays.unlink(missing_ok=True)  # what an earlier task left is no answer to this one
        write_inputs(task.blend, inputs)
    except (OSError, zipfile.BadZipFile, KeyError) as error:
        return Outcome(task, None, f"the blend's inputs cannot be given: {error}", 0.0, None, slot)
    request = {"blend": str(inputs), "out": str(arrays), "options": task.options}
    cpu, started = worker.cpu(), time.perf_counter()
    try:
        reply = worker.run(request, timeout)
    except WorkerError as error:
        return Outcome(task, None, str(error), time.perf_counter() - started, None, slot)
    wall, cpu = time.perf_counter() - started, worker.cpu() - cpu
    if not reply.get("ok"):
        error = reply.get("error", "unknown worker error")
        return Outcome(task, reply, error, wall, cpu, slot)
    try:
        collect(arrays, task.out)
    except OSError as error:
        error_text = f"the worker's arrays cannot be collected: {error}"
        return Outcome(task, reply, error_text, wall, cpu, slot)
    return Outcome(task, reply, None, wall, cpu, slot)


def write_inputs(blend: Path, inputs: Path) -> None:
    """Write the arrays of the blend file ``blend`` a deblender is given (:data:`INPUT_KEYS`)
    to ``inputs``, as stored (replacing whatever is there: a worker may have left a link)."""
    inputs.unlink(missing_ok=True)
    with zipfile.ZipFile(blend) as source, zipfile.ZipFile(inputs, "x") as target:
        for key in INPUT_KEYS:
            info = source.getinfo(f"{key}.npy")
            target.writestr(info, source.read(info))


def collect(arrays: Path, out: Path) -> None:
    """Copy the file a worker wrote to ``out`` and remove it, refusing anything but a
    regular file (a symbolic link would have us copy what it points to, a pipe block) of
    at most :data:`ARRAYS_LIMIT` bytes."""
    fd = os.open(arrays, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(fd, "rb") as source:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(f"{arrays.name} is not a regular file")
        if status.st_size > ARRAYS_LIMIT:
            raise OSError(f"{arrays.name} holds over {ARRAYS_LIMIT // 2**20} MiB")
        with open(out, "wb") as target:
            shutil.copyfileobj(source, target)
    arrays.unlink()
