"""Logs written by untrusted code, read and kept within bounds: never a whole file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

TAIL_BYTES = 64 * 2**10  # what a tail is read from


def read_tail(path: Path, lines: int, limit: int = TAIL_BYTES) -> str:
    """The last ``lines`` lines of the file at ``path`` among its last ``limit`` bytes
    ("" where it cannot be read)."""
    try:
        with open(path, "rb") as stream:
            size = stream.seek(0, os.SEEK_END)
            stream.seek(max(size - limit, 0))
            data = stream.read(limit)
    except OSError:
        return ""
    text = data.decode(errors="replace").splitlines()
    if len(data) == limit and size > limit:
        text = text[1:]  # the first line read is cut
    return "\n".join(text[-lines:])


class CappedLog:
    """A log file that keeps the first ``limit`` bytes written to it, then only the last
    :data:`TAIL_BYTES` of each part (:meth:`close_part`), with how much was left out."""

    def __init__(self, stream: BinaryIO, limit: int):
        self.stream = stream
        self.left = limit
        self.dropped = 0
        self.tail = bytearray()

    def write(self, data: bytes) -> None:
        """Keep ``data`` while the limit allows, its end otherwise."""
        kept = data[: max(self.left, 0)]
        if kept:
            self.stream.write(kept)
            self.stream.flush()
            self.left -= len(kept)
        rest = data[len(kept) :]
        if rest:
            self.dropped += len(rest)
            self.tail = (self.tail + rest)[-TAIL_BYTES:]

    def note(self, text: str) -> None:
        """A line of the runner's own (never cut)."""
        self.close_part()
        self.stream.write(text.encode())
        self.stream.flush()

    def close_part(self) -> None:
        """Write what was left out of the part since the last call, and its tail."""
        if self.dropped:
            self.stream.write(f"\n[... {self.dropped} bytes of output left out ...]\n".encode())
            self.stream.write(bytes(self.tail))
            self.stream.flush()
            self.dropped = 0
            self.tail = bytearray()
