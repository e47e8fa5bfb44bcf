from __future__ import annotations

import pytest

from ghitwork.model.scopes import covering, covers, scope_problem


def test_a_team_covers_its_repos_and_threads() -> None:
    assert covers("team:ghit", "repo:teams/ghit/ghit")
    assert covers("team:ghit", "thread:teams/ghit/ghit/39")
    assert not covers("team:ghit", "repo:teams/other/ghit")
    assert not covers("team:ghit", "thread:ghit/dotfiles/1")


def test_a_repo_covers_its_threads_only() -> None:
    assert covers("repo:teams/ghit/ghit", "thread:teams/ghit/ghit/39")
    assert covers("repo:bob/dotfiles", "thread:bob/dotfiles/1")
    assert not covers("repo:teams/ghit/ghit", "thread:teams/ghit/ghit-cli/39")
    assert not covers("repo:teams/ghit/ghit", "repo:teams/ghit/ghit-cli")


def test_narrow_subscriptions_do_not_cover_broader_scopes() -> None:
    assert not covers("thread:teams/ghit/ghit/39", "repo:teams/ghit/ghit")
    assert not covers("thread:teams/ghit/ghit/39", "thread:teams/ghit/ghit/391")
    assert covering("user:codex") == ("user:codex",)


@pytest.mark.parametrize(
    "scope",
    [
        "team:ghit",
        "repo:teams/ghit/ghit",
        "repo:bob/dotfiles",
        "thread:teams/ghit/ghit/39",
        "thread:bob/dotfiles/2",
        "user:codex",
    ],
)
def test_well_formed_scopes_pass(scope: str) -> None:
    assert scope_problem(scope) is None


@pytest.mark.parametrize(
    ("scope", "words"),
    [
        ("self", "cannot be matched"),
        ("org:ghit", "not a scope"),
        ("ghit", "not a scope"),
        ("thread:teams/ghit/ghit", "not a well-formed thread"),
        ("repo:ghit", "not a well-formed"),
        ("team:", "not a well-formed"),
        ("team:a b", "not a well-formed"),
    ],
)
def test_malformed_scopes_are_explained(scope: str, words: str) -> None:
    problem = scope_problem(scope)
    assert problem is not None and words in problem
