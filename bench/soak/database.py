"""The throw-away PostgreSQL database of one run (its name starts with ``ikbg_soak_``)."""

from __future__ import annotations

import os
import secrets
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .procs import SoakError


def _pg_config(url: str) -> dict[str, Any]:
    import environ

    config = environ.Env.db_url_config(url)
    if "postgresql" not in config["ENGINE"]:
        raise SoakError(f"the soak needs PostgreSQL; DATABASE_URL is {config['ENGINE']}")
    return config


def _pg_admin(url: str):
    import psycopg

    config = _pg_config(url)
    try:
        return psycopg.connect(
            dbname="postgres",
            user=config["USER"] or None,
            password=config["PASSWORD"] or None,
            host=config["HOST"] or None,
            port=config["PORT"] or None,
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        raise SoakError(f"PostgreSQL is not reachable ({url}): {exc}".strip()) from None


def create_database(url: str, prefix: str = "ikbg_soak") -> tuple[str, str]:
    """Create a fresh database on the server ``url`` names; returns (name, its URL)."""
    from psycopg import sql

    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    with _pg_admin(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(url)
    return name, urlunsplit(parts._replace(path=f"/{name}"))


def drop_database(url: str, name: str) -> None:
    from psycopg import sql

    with _pg_admin(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
