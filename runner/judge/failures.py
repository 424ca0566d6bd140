"""What broke on one side, said once: a build's error read off its log, a deblender's
errors grouped by kind (type and where it was raised), never one line per blend."""

from __future__ import annotations

import re
from pathlib import PurePath

from runner.result import BlendResult, Build, Failure, RunResult

# The last line of a Python traceback: "SyntaxError: unterminated string literal ..."
# (an adapter's DeblendFailure included).
EXCEPTION = re.compile(
    r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Failure|Exit|Interrupt|Warning))(?::\s*(.*))?$"
)
FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)')
DETECTED = re.compile(r"\s*\(detected at line \d+\)$")
FRAMES_SHOWN = 12  # lines of a traceback shown


def build_error(build: Build) -> str:
    """The error a failed build ended with, as read off its log: the last exception line,
    with the file and line of the last frame above it ("SyntaxError: unterminated string
    literal (version.py, line 27)"); else the build's own error."""
    lines = (build.log_tail or "").splitlines()
    for index in range(len(lines) - 1, -1, -1):
        found = EXCEPTION.match(lines[index])
        if not found:
            continue
        name, message = found[1], DETECTED.sub("", found[2] or "").strip()
        text = f"{name}: {message}" if message else name
        for line in reversed(lines[:index]):
            frame = FRAME.match(line)
            if frame:
                return f"{text} ({PurePath(frame[1]).name}, line {frame[2]})"
        return text
    return build.error or "the build failed"


def error_kind(error: str | None, raised_in: str | None) -> str:
    """A deblend error's kind: its exception type and where it was raised, or its first
    line where it is no exception (a timeout, a crash)."""
    first = (error or "unknown error").splitlines()[0]
    name = first.split(":", 1)[0] if EXCEPTION.match(first) else None
    if name and raised_in:
        return f"{name} in {raised_in}"
    return name or first[:200]


def _deblend_failures(blends: list[BlendResult], side: str) -> list[Failure]:
    groups: dict[str, list[BlendResult]] = {}
    for blend in blends:
        run = getattr(blend, side)
        if run.status == "errored":
            groups.setdefault(error_kind(run.error, run.raised_in), []).append(blend)
    failures = []
    for kind, members in sorted(groups.items(), key=lambda item: -len(item[1])):
        first = getattr(members[0], side)
        lines = (first.traceback or first.error or "").splitlines()
        failures.append(
            Failure(
                side,  # type: ignore[arg-type]
                "deblend",
                kind,
                "\n".join(lines[-FRAMES_SHOWN:]),
                len(members),
                len(blends),
                [f"{b.dataset}/{b.id}" for b in members[:5]],
            )
        )
    return failures


def failures(result: RunResult) -> list[Failure]:
    """What broke on each side: a build that failed, or the distinct errors of its
    deblends (blends that are not valid blend files count for neither side)."""
    found = []
    for side in ("head", "base"):
        info = getattr(result.provenance, side)
        if info.build.status == "refused":
            continue  # the adapter's, not the revision's: the run's tool failure says it
        if info.build.status == "failed":
            found.append(Failure(side, "build", build_error(info.build), info.build.log_tail or ""))  # type: ignore[arg-type]
            continue
        valid = [b for b in result.blends if not (b.base.error or "").startswith("bad blend file")]
        found += _deblend_failures(valid, side)
    return found
