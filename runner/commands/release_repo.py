"""A git repository made from a released sdist, to run the runner against a release.

``release_repository("scarlet2==0.5.1", dir)`` downloads the sdist from the package
index, commits its tree and tags it ``v0.5.1``, so versioning tools such as
setuptools_scm see the release version.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from runner.deblend.revisions import git

COMMIT_ENV = {
    "GIT_AUTHOR_NAME": "scarlet-regression",
    "GIT_AUTHOR_EMAIL": "scarlet-regression@localhost",
    "GIT_COMMITTER_NAME": "scarlet-regression",
    "GIT_COMMITTER_EMAIL": "scarlet-regression@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
}


class ReleaseError(RuntimeError):
    """The release could not be downloaded or unpacked."""


def download_sdist(requirement: str, dest: Path) -> Path:
    """Download the sdist of ``requirement`` (no dependencies) into ``dest``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(dest.glob("*.tar.gz"))
    if result.returncode != 0 or not archives:
        reason = (result.stderr.strip().splitlines() or ["no sdist found"])[-1]
        raise ReleaseError(f"cannot download the sdist of {requirement}: {reason}")
    return archives[0]


def release_repository(requirement: str, out: Path) -> str:
    """Make ``out`` a git repository holding the sdist of ``requirement``; return its tag."""
    out = Path(out)
    if out.exists():
        raise ReleaseError(f"{out} exists already")
    with tempfile.TemporaryDirectory() as tmp:
        archive = download_sdist(requirement, Path(tmp))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (top,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        for egg_info in top.glob("**/*.egg-info"):
            shutil.rmtree(egg_info)
        shutil.copytree(top, out)
    version = top.name.rsplit("-", 1)[-1]
    tag = f"v{version}"
    commit(out, f"Release {version} from its sdist", init=True)
    git(out, "tag", tag)
    return tag


def commit(repo: Path, message: str, init: bool = False) -> str:
    """Commit every change in ``repo`` (creating it with ``init``); return the SHA."""
    env_args = [f"{key}={value}" for key, value in COMMIT_ENV.items()]
    if init:
        git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", "--all")
    subprocess.run(
        ["env", *env_args, "git", "-C", str(repo), "commit", "--quiet", "-m", message],
        check=True,
    )
    return git(repo, "rev-parse", "HEAD")


def add_parser(commands) -> None:
    """Add the verb to the runner's subcommands."""
    release = commands.add_parser(
        "release-repo", help="make a git repository from a released sdist on PyPI"
    )
    release.add_argument("requirement", help="e.g. scarlet2==0.5.1")
    release.add_argument("--out", type=Path, required=True)
    release.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Make the repository, or say in one line why not."""
    try:
        tag = release_repository(args.requirement, args.out)
    except ReleaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: git repository of {args.requirement}, tagged {tag}")
    return 0
