"""Resolving revisions: SHAs, tags, branches as merge-bases, and revisions that do not exist."""

from __future__ import annotations

import pytest

from runner.commands.release_repo import commit
from runner.deblend.revisions import RevisionError, checkout, git, local_repository, resolve_pair


@pytest.fixture
def repo(tmp_path):
    """main: A - B - D; feature branches off B: B - C."""
    path = tmp_path / "repo"
    path.mkdir()
    (path / "f.txt").write_text("a")
    shas = {"A": commit(path, "A", init=True)}
    (path / "f.txt").write_text("b")
    shas["B"] = commit(path, "B")
    git(path, "checkout", "--quiet", "-b", "feature")
    (path / "f.txt").write_text("c")
    shas["C"] = commit(path, "C")
    git(path, "checkout", "--quiet", "main")
    (path / "g.txt").write_text("d")
    shas["D"] = commit(path, "D")
    git(path, "tag", "v1", shas["A"])
    return path, shas


def test_a_branch_as_base_means_its_merge_base_with_head(repo):
    path, shas = repo
    revs = resolve_pair(path, "feature", "main")
    assert revs.head == shas["C"]
    assert revs.base == shas["B"] == revs.merge_base


def test_a_sha_or_tag_as_base_is_taken_as_it_is(repo):
    path, shas = repo
    revs = resolve_pair(path, shas["C"], "v1")
    assert (revs.head, revs.base, revs.merge_base) == (shas["C"], shas["A"], None)
    assert resolve_pair(path, "feature", shas["D"][:10]).base == shas["D"]


def test_a_revision_that_does_not_exist_is_named(repo):
    path, _ = repo
    with pytest.raises(RevisionError, match="revision 'nope' does not exist"):
        resolve_pair(path, "nope", "main")


def test_a_directory_that_is_no_repository_is_refused(tmp_path):
    with pytest.raises(RevisionError, match="is not a git repository"):
        local_repository(str(tmp_path), tmp_path / "cache")


def test_a_url_is_cloned_into_the_cache_and_updated(repo, tmp_path):
    path, shas = repo
    url = f"file://{path}"
    mirror = local_repository(url, tmp_path / "cache")
    assert resolve_pair(mirror, "feature", "main").base == shas["B"]
    (path / "h.txt").write_text("e")
    new = commit(path, "E")
    assert local_repository(url, tmp_path / "cache") == mirror
    assert resolve_pair(mirror, "main", "v1").head == new


def test_a_pull_request_head_that_came_after_the_clone_is_fetched(repo, tmp_path):
    # A fork's PR exists in the upstream repository only as refs/pull/N/head.
    path, shas = repo
    url = f"file://{path}"
    mirror = local_repository(url, tmp_path / "cache")
    git(path, "checkout", "--quiet", "--detach", shas["C"])
    (path / "fork.txt").write_text("from a fork")
    fork = commit(path, "a fork's commit")
    git(path, "update-ref", "refs/pull/2/head", fork)
    git(path, "checkout", "--quiet", "main")
    local_repository(url, tmp_path / "cache")
    assert resolve_pair(mirror, "refs/pull/2/head", "main").head == fork


def test_checkout_gives_the_tree_of_the_sha_with_its_tags(repo, tmp_path):
    path, shas = repo
    tree = checkout(path, shas["C"], tmp_path / "co")
    assert (tree / "f.txt").read_text() == "c"
    assert git(tree, "rev-parse", "HEAD") == shas["C"]
    assert git(tree, "tag") == "v1"
