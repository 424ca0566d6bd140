"""Git: find the repository, resolve revisions to SHAs, check a SHA out."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path


class RevisionError(RuntimeError):
    """A repository or revision that cannot be used, with the reason."""


@dataclass(frozen=True)
class Revisions:
    """Resolved head and base: ``base`` is the merge-base when a branch was given."""

    head: str
    base: str
    head_rev: str
    base_rev: str
    merge_base: str | None


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return its stripped output; raise RevisionError on failure."""
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RevisionError(f"git {' '.join(args)} failed in {repo}: {message}")
    return result.stdout.strip()


def local_repository(repo: str, cache: Path) -> Path:
    """A local git directory for ``repo``: the path itself, or a cached mirror of a URL."""
    path = Path(repo).expanduser()
    if path.exists():
        try:
            git(path, "rev-parse", "--git-dir")
        except RevisionError:
            raise RevisionError(f"{repo} is not a git repository") from None
        return path.resolve()
    mirror = cache / "repos" / hashlib.sha256(repo.encode()).hexdigest()[:16]
    if mirror.exists():
        # Branches, tags and pull requests' heads (a fork's PR exists upstream only there).
        refs = ("+refs/heads/*:refs/heads/*", "+refs/pull/*/head:refs/pull/*/head")
        git(mirror, "fetch", "--prune", "--tags", "origin", *refs)
    else:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["git", "clone", "--mirror", repo, str(mirror)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RevisionError(f"cannot clone {repo}: {result.stderr.strip()}")
    return mirror


def default_branch(repo: Path) -> str:
    """The repository's default branch, as it names it now: a clone's ``origin/HEAD``, a
    mirror's ``HEAD`` (so a drift run watches the newest commit of main, whatever its name)."""
    for ref, prefix in (("refs/remotes/origin/HEAD", "refs/remotes/"), ("HEAD", "refs/heads/")):
        try:
            return git(repo, "symbolic-ref", "--quiet", ref).removeprefix(prefix)
        except RevisionError:
            continue
    raise RevisionError(f"{repo} names no default branch (its HEAD is detached)")


def resolve(repo: Path, rev: str) -> str:
    """The commit SHA that ``rev`` names in ``repo``."""
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RevisionError:
        raise RevisionError(f"revision {rev!r} does not exist in {repo}") from None


def is_branch(repo: Path, rev: str) -> bool:
    """Whether ``rev`` names a local or remote-tracking branch."""
    try:
        name = git(repo, "rev-parse", "--symbolic-full-name", rev)
    except RevisionError:
        return False
    return name.startswith(("refs/heads/", "refs/remotes/"))


def resolve_pair(repo: Path, head: str, base: str) -> Revisions:
    """Resolve head and base; a base given as a branch means its merge-base with head."""
    head_sha = resolve(repo, head)
    base_sha = resolve(repo, base)
    merge_base = None
    if is_branch(repo, base):
        try:
            merge_base = git(repo, "merge-base", head_sha, base_sha)
        except RevisionError:
            raise RevisionError(f"{head} and {base} share no history") from None
        base_sha = merge_base
    return Revisions(head_sha, base_sha, head, base, merge_base)


def checkout(repo: Path, sha: str, dest: Path) -> Path:
    """A work tree of ``sha`` at ``dest`` (a local clone, so tags and history come along)."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        result = subprocess.run(
            ["git", "clone", "--quiet", "--no-checkout", str(repo), str(tmp)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RevisionError(f"cannot clone {repo}: {result.stderr.strip()}")
        git(tmp, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha)
        tmp.rename(dest)
    return dest
