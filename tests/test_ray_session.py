"""The tests' own Ray session: what tests/conftest.py promises about it."""

from __future__ import annotations


def test_the_test_session_runs_without_token_auth(ray_session):
    """The tests' own Ray runs without token auth even from a shell that exports
    RAY_AUTH_MODE=token (tests/conftest.py overrides it): its workers see it disabled."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    @ray_session.remote
    def worker_mode() -> tuple[str | None, bool]:
        import os

        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return os.environ.get("RAY_AUTH_MODE"), is_token_auth_enabled()

    assert not is_token_auth_enabled()
    assert ray_session.get(worker_mode.remote()) == ("disabled", False)
