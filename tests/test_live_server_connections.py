"""The live server's request threads never share the test's SQLite connection: two threads on
one sqlite3 connection crash the interpreter ("Fatal Python error: Segmentation fault"), which
is what a browser test run on its own met."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db(transaction=True)
def test_the_live_server_has_connections_of_its_own(live_server):
    assert live_server.thread.connections_override == {}


def test_also_when_the_live_server_starts_before_the_test_database():
    # The session-wide live server is started by the first test that asks for it; alone, that
    # test starts it before the test database is set up, as a browser test file run alone did.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_the_live_server_has_connections_of_its_own",
        ],
        cwd=ROOT,
        # SQLite is where the sharing happens (and the running test holds a PostgreSQL one).
        env={**os.environ, "DATABASE_URL": "sqlite:///:memory:"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
