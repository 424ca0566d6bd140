"""Tool failures: when the adapter, not the revision under test, failed.

A pull request is never blamed for the tool's own break. The adapter cannot drive a
revision when

- an exception was raised in the adapter's own code (the worker tells: the innermost
  frame of its traceback is the adapter's or the worker's, and it is not the adapter's
  ``DeblendFailure``, by which an adapter reports that the deblender could not deblend a
  blend): an API it relies on changed under it;
- every blend failed on both sides, and the same way on both: nothing of the revisions
  can be told apart, the tool's environment is the likelier cause;
- the adapter refused to build a revision (``Build.status`` "refused").

:func:`tool_failure` classifies a run result; the comparison consumes it (verdict neutral,
its headline first among the reasons) and the report shows it loudly, traceback and all.
"""

from __future__ import annotations

from runner.result import BlendResult, RunResult, ToolFailure

SIDES = ("base", "head")


def tool_failure(result: RunResult) -> ToolFailure | None:
    """How the adapter failed to drive a revision of this run, or None."""
    provenance = result.provenance
    adapter = provenance.adapter
    for side in SIDES:
        build = getattr(provenance, side).build
        if build.status == "refused":
            return ToolFailure(
                adapter,
                "refused",
                f"the {adapter} adapter cannot build {side} ({getattr(provenance, side).sha[:12]}):"
                f" {build.error}",
                build.error or "refused",
                None,
                [side],
                len(result.blends),
            )
    own = [
        (blend, side)
        for blend in result.blends
        for side in SIDES
        if getattr(blend, side).raised_by == "adapter"
    ]
    if own:
        first = getattr(own[0][0], own[0][1])
        sides = [side for side in SIDES if any(s == side for _, s in own)]
        which = "this revision" if len(sides) == 1 else "these revisions"
        return ToolFailure(
            adapter,
            "adapter code",
            f"the {adapter} adapter cannot drive {which} ({_shas(result, sides)}):"
            f" {_line(first.error)}",
            first.error or "",
            first.traceback,
            sides,
            len({(b.dataset, b.id) for b, _ in own}),
        )
    if result.blends and all(_same_failure(blend) for blend in result.blends):
        first = result.blends[0].head
        return ToolFailure(
            adapter,
            "same failure on both sides",
            f"the {adapter} adapter cannot drive these revisions: every blend failed the same"
            f" way on both sides: {_line(first.error)}",
            first.error or "",
            first.traceback,
            list(SIDES),
            len(result.blends),
        )
    return None


def _same_failure(blend: BlendResult) -> bool:
    base, head = blend.base, blend.head
    return base.status == head.status == "errored" and _line(base.error) == _line(head.error)


def _shas(result: RunResult, sides: list[str]) -> str:
    return ", ".join(f"{side} {getattr(result.provenance, side).sha[:12]}" for side in sides)


def _line(error: str | None) -> str:
    """The first line of an error message."""
    return (error or "unknown error").strip().splitlines()[0]
