"""The base by ref and SHA: ``refs/heads/<name>`` is that branch, never a tag named like
it, and the SHA the pull request's event named is the base once it is on the branch."""

from __future__ import annotations

import pytest

from runner.commands.release_repo import commit
from runner.deblend.revisions import RevisionError, git, local_repository, resolve_pair


@pytest.fixture
def repo(tmp_path):
    """main: A - B - D; feature off B: C; an unrelated commit X; a tag ``main`` at X."""
    path = tmp_path / "repo"
    path.mkdir()
    (path / "f.txt").write_text("a")
    shas = {"A": commit(path, "A", init=True)}
    (path / "f.txt").write_text("b")
    shas["B"] = commit(path, "B")
    git(path, "checkout", "--quiet", "-b", "feature")
    (path / "f.txt").write_text("c")
    shas["C"] = commit(path, "C")
    git(path, "checkout", "--quiet", "--orphan", "elsewhere")
    (path / "x.txt").write_text("x")
    shas["X"] = commit(path, "X")
    git(path, "checkout", "--quiet", "main")
    (path / "g.txt").write_text("d")
    shas["D"] = commit(path, "D")
    git(path, "tag", "main", shas["X"])
    return path, shas


def test_a_tag_named_like_the_base_branch_cannot_move_the_base(repo):
    path, shas = repo
    assert git(path, "rev-parse", "main") == shas["X"]  # git's own lookup: the tag wins
    revs = resolve_pair(path, shas["C"], "refs/heads/main", shas["D"])
    assert revs.base == revs.merge_base == shas["B"]
    assert revs.base_rev == "refs/heads/main"
    assert resolve_pair(path, shas["C"], "refs/heads/main").base == shas["B"]


def test_through_a_mirror_too(repo, tmp_path):
    path, shas = repo
    mirror = local_repository(f"file://{path}", tmp_path / "cache")
    assert resolve_pair(mirror, shas["C"], "refs/heads/main", shas["D"]).base == shas["B"]


def test_the_events_sha_is_the_base_when_the_branch_has_moved_on(repo):
    path, shas = repo
    git(path, "checkout", "--quiet", "feature")
    git(path, "merge", "--quiet", "--no-edit", shas["D"])  # head merged main at D
    head = git(path, "rev-parse", "HEAD")
    git(path, "checkout", "--quiet", "main")
    (path / "h.txt").write_text("e")
    commit(path, "E: main moves on after the event")
    assert resolve_pair(path, head, "refs/heads/main", shas["B"]).base == shas["B"]
    assert resolve_pair(path, head, "refs/heads/main", shas["D"]).base == shas["D"]


@pytest.mark.parametrize(
    ("base", "sha", "message"),
    [
        ("refs/heads/main", "X", r"^base \w{12} is not on refs/heads/main \(at \w{12}\)"),
        ("refs/heads/nope", "D", "^branch 'refs/heads/nope' does not exist"),
        ("main", "D", r"^a base SHA needs the base as refs/heads/<name>, got 'main'$"),
        ("refs/heads/main", "main", "^the base SHA must be 40 hexadecimal digits"),
    ],
)
def test_a_base_that_disagrees_is_refused_with_one_line(repo, base, sha, message):
    path, shas = repo
    with pytest.raises(RevisionError, match=message) as refused:
        resolve_pair(path, shas["C"], base, shas.get(sha, sha))
    assert "\n" not in str(refused.value)


def test_a_bare_name_of_both_a_branch_and_a_tag_is_refused(repo):
    path, shas = repo
    ambiguous = r"'main' names both a branch and a tag .*: give refs/heads/main$"
    with pytest.raises(RevisionError, match=ambiguous):
        resolve_pair(path, shas["C"], "main")
