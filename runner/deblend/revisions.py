"""Git: find the repository, resolve revisions to SHAs, check a SHA out.

A base given as a full branch ref (``refs/heads/<name>``, as the bot gives it) is that
branch and nothing else: git's own lookup of a bare name prefers a tag, so a tag named
like the base branch would become the base. With the SHA the pull request's event named
(``base_sha``), that commit is the base's tip, once git confirms it is on the branch.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


class RevisionError(RuntimeError):
    """A repository or revision that cannot be used, with the reason."""


BRANCH = "refs/heads/"
SHA = re.compile(r"[0-9a-f]{40}")


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
    """The commit SHA that ``rev`` names in ``repo``: a full branch ref only that branch;
    a bare name of both a branch and a tag is refused as ambiguous."""
    if rev.startswith(BRANCH):
        return branch_tip(repo, rev)
    if not SHA.fullmatch(rev) and not rev.startswith("refs/"):
        both = [f"{kind}{rev}" for kind in (BRANCH, "refs/tags/") if _ref(repo, f"{kind}{rev}")]
        if len(both) == 2:
            raise RevisionError(f"{rev!r} names both a branch and a tag in {repo}: give {both[0]}")
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RevisionError:
        raise RevisionError(f"revision {rev!r} does not exist in {repo}") from None


def _ref(repo: Path, ref: str) -> str | None:
    """The SHA the full ref ``ref`` points at exactly (no lookup rules), if it exists."""
    found = subprocess.run(
        ["git", "-C", str(repo), "show-ref", "--verify", "--hash", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        return None
    return found.stdout.strip() or None


def branch_tip(repo: Path, ref: str) -> str:
    """The commit at the tip of the branch ``refs/heads/<name>``, never a tag's."""
    sha = _ref(repo, ref)
    if sha is None:
        raise RevisionError(f"branch {ref!r} does not exist in {repo}")
    return git(repo, "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}")


def is_branch(repo: Path, rev: str) -> bool:
    """Whether ``rev`` names a local or remote-tracking branch."""
    try:
        name = git(repo, "rev-parse", "--symbolic-full-name", rev)
    except RevisionError:
        return False
    return name.startswith(("refs/heads/", "refs/remotes/"))


def base_on_branch(repo: Path, ref: str, sha: str) -> str:
    """``sha`` (a full commit SHA), once it is on the branch ``ref`` (its tip or an
    ancestor of it: the branch may have moved on since the event that named both)."""
    if not SHA.fullmatch(sha):
        raise RevisionError(f"the base SHA must be 40 hexadecimal digits, got {sha!r}")
    tip = branch_tip(repo, ref)
    commit = resolve(repo, sha)
    on = subprocess.run(
        ["git", "-C", str(repo), "merge-base", "--is-ancestor", commit, tip], capture_output=True
    )
    if on.returncode != 0:
        raise RevisionError(f"base {sha[:12]} is not on {ref} (at {tip[:12]}): refusing to run")
    return commit


def resolve_pair(repo: Path, head: str, base: str, base_sha: str | None = None) -> Revisions:
    """Resolve head and base; a base given as a branch means its merge-base with head.
    With ``base_sha``, ``base`` must be a full branch ref holding it, and the merge-base
    is taken with that commit rather than with the branch's tip."""
    head_sha = resolve(repo, head)
    if base_sha is not None:
        if not base.startswith(BRANCH):
            raise RevisionError(f"a base SHA needs the base as {BRANCH}<name>, got {base!r}")
        base_sha = base_on_branch(repo, base, base_sha)
    else:
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


def check_on_branch(repo: Path, branch: str, shas: list[str]) -> None:
    """RevisionError unless every one of ``shas`` is a commit of the branch ``branch``
    (``refs/heads/<branch>``, never a tag of that name): an ancestor of its tip."""
    ref = f"refs/heads/{branch.removeprefix('refs/heads/')}"
    try:
        git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except RevisionError:
        raise RevisionError(f"the trusted ref {branch!r} is not a branch of {repo}") from None
    for sha in shas:
        result = subprocess.run(
            ["git", "-C", str(repo), "merge-base", "--is-ancestor", sha, ref],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RevisionError(f"{sha[:12]} is not a commit of the trusted ref {ref}")


def mainline_ancestors(repo: Path, sha: str, limit: int) -> list[str]:
    """Up to ``limit`` ancestors of ``sha`` (itself not included), nearest first, that lie
    on the default branch (the first-parent history of the repository's ``HEAD``)."""
    mainline = set(git(repo, "rev-list", "--first-parent", "HEAD").split())
    older = git(repo, "rev-list", "--topo-order", sha).split()[1:]
    return [commit for commit in older if commit in mainline][:limit]
