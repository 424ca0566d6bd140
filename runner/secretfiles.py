"""Which files on this machine hold secrets: what the sandbox (``runner.deblend.sandbox``)
hides from untrusted code, and how a caller (the bot) names its own.

Secret files are those named by ``GOOGLE_APPLICATION_CREDENTIALS``, by any ``*_FILE``
variable but certificate authorities' (``SSL_CERT_FILE``, ...) and by ``SCARLET_REGRESSION_HIDE``
(``os.pathsep``-separated, for a caller to name its own) in the runner's environment, and
the folder ``~/.config/gcloud``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

HIDE_VARIABLE = "SCARLET_REGRESSION_HIDE"


def _public(variable: str) -> bool:
    """Whether a ``*_FILE`` variable names certificates builds need (``SSL_CERT_FILE``,
    ``NIX_SSL_CERT_FILE``, ...), not a secret (a ``*_CERT_KEY_FILE`` is one)."""
    return "CERT" in variable and "KEY" not in variable


def secret_paths(environ: Mapping[str, str]) -> list[Path]:
    """The existing files and folders holding secrets, named by ``environ``."""
    named = [environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")]
    named += [v for k, v in environ.items() if k.endswith("_FILE") and not _public(k)]
    named += environ.get(HIDE_VARIABLE, "").split(os.pathsep)
    home = environ.get("HOME")
    if home:
        named.append(str(Path(home) / ".config" / "gcloud"))
    paths = {Path(name).resolve() for name in named if name and os.path.isabs(name)}
    return sorted(path for path in paths if path.exists())
