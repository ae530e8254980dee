"""A throwaway PostgreSQL from the pgserver wheel, for `relay demo` and hermetic tests."""

from __future__ import annotations

import fcntl
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.errors import SettingsError


@contextmanager
def embedded_postgres(data_dir: Path | None = None) -> Iterator[str]:
    """Start a private PostgreSQL, yield its URL, stop it (and delete a temporary data dir)."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); it is harmless.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            import pgserver
        except ImportError:
            raise SettingsError(
                "no RELAY_DATABASE_URL and no embedded PostgreSQL: set RELAY_DATABASE_URL, or "
                "install the embedded extra (pip install 'relay[embedded]')"
            ) from None
        directory = data_dir or Path(tempfile.mkdtemp(prefix="relay-pg-"))
        # Run as root, pgserver creates a system user on first use; two processes starting at
        # once (parallel tests on a fresh machine) raced to create it and one initdb failed
        # with "Permission denied". One start at a time, machine-wide.
        with open(Path(tempfile.gettempdir()) / "relay-pgserver.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            server = pgserver.get_server(  # type: ignore[attr-defined]
                directory, cleanup_mode="stop" if data_dir else "delete"
            )
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
