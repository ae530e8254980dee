"""Settings: RELAY_* variables, defaults, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import load_settings
from relay.errors import SettingsError
from relay.retry import DEFAULT_SCHEDULE


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)


def test_defaults_follow_the_spec() -> None:
    settings = load_settings()
    assert settings.retry_schedule.delays == DEFAULT_SCHEDULE
    assert settings.endpoint_overrides == {}
    assert settings.base_url("https://api.segment.io/") == "https://api.segment.io"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_RETRY_SCHEDULE", "30s, 5m")
    monkeypatch.setenv("RELAY_LEASE_SECONDS", "2m")
    monkeypatch.setenv(
        "RELAY_ENDPOINT_OVERRIDES", '{"https://api.segment.io/": "http://127.0.0.1:8765/"}'
    )
    settings = load_settings()
    assert settings.retry_schedule.delays == (30, 300)
    assert settings.lease_seconds == 120
    assert settings.base_url("https://api.segment.io") == "http://127.0.0.1:8765"
    assert settings.base_url("https://events.eu1.segmentapis.com") == (
        "https://events.eu1.segmentapis.com"
    )


def test_overrides_take_precedence_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_DATABASE_URL", "postgresql://env/db")
    assert load_settings(database_url="postgresql://flag/db").database_url == "postgresql://flag/db"
    assert load_settings(database_url=None).database_url == "postgresql://env/db"


def test_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "relay.env"
    env_file.write_text("RELAY_CONCURRENCY=7\n")
    monkeypatch.setenv("RELAY_ENV_FILE", str(env_file))
    assert load_settings().concurrency == 7


def test_missing_env_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ENV_FILE", "/nonexistent/relay.env")
    with pytest.raises(SettingsError, match="RELAY_ENV_FILE: no such file"):
        load_settings()


def test_override_replacement_must_be_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ENDPOINT_OVERRIDES", '{"https://api.segment.io": "localhost:8765"}')
    with pytest.raises(SettingsError, match=r"RELAY_ENDPOINT_OVERRIDES: .* is not an http"):
        load_settings()


def test_missing_database_url_is_named() -> None:
    with pytest.raises(SettingsError, match="RELAY_DATABASE_URL is not set"):
        load_settings().require_database_url()


def test_a_claim_hold_as_long_as_the_lease_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_LEASE_SECONDS", "2")
    monkeypatch.setenv("RELAY_CLAIM_HOLD_SECONDS", "2s")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid settings: RELAY_CLAIM_HOLD_SECONDS (2) must be shorter than "
        "RELAY_LEASE_SECONDS (2)"
    )
    monkeypatch.setenv("RELAY_CLAIM_HOLD_SECONDS", "500ms")
    assert load_settings().claim_hold_seconds == 0.5
