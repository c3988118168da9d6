"""CI runs the README's test command with the browser test enforced (issue #18)."""
from __future__ import annotations

from pathlib import Path

import pytest

import tests.test_web as web

CI_RUN = Path(__file__).resolve().parents[1] / ".ci" / "run"


def test_ci_installs_the_browser_and_runs_exactly_make_test() -> None:
    commands = [line.strip() for line in CI_RUN.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert commands[-1] == "make test" and "export CI=true" in commands
    assert any("apt-get install -y chromium chromium-driver" in c for c in commands)


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must not be skipped in CI"):
        web.browser_missing("chromium/chromedriver not installed")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        web.browser_missing("chromium/chromedriver not installed")


def test_the_browser_check_runs_before_the_server_is_built(monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(web, "CHROMEDRIVER", None)
    with pytest.raises(pytest.fail.Exception):
        web.browser_installed.__wrapped__()
