"""Fixtures of the runner's tests: a login role and its own database (tests of the next run)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cicd_db.settings import ConnectionSettings

from ..fix_db import Database, Databases
from .next_run import PASSWORD, Login, past_settings


@pytest.fixture
def roles(server: ConnectionSettings) -> Iterator[psycopg.Connection[Any]]:
    """A superuser session on the server, for roles."""
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        yield conn


@pytest.fixture(params=["superuser", "owner"])
def login(
    request: pytest.FixtureRequest,
    databases: Databases,
    empty_template: str,
    roles: psycopg.Connection[Any],
) -> Iterator[Login]:
    # The owner's name needs quoting (a space, capitals, a quote, letters that are not
    # ASCII): every statement a message names for it must be right as written, and no
    # piece of it taken for a password and hidden.
    prefix = "next_run_" if request.param == "superuser" else 'Next "Rün" Ï '
    role = prefix + uuid.uuid4().hex[:10]
    power = sql.SQL("SUPERUSER" if request.param == "superuser" else "NOSUPERUSER")
    roles.execute(
        sql.SQL("CREATE ROLE {} {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), power, sql.Literal(PASSWORD)
        )
    )
    made = databases.create(empty_template, owner=role)
    version = int(str(made.query("SHOW server_version_num")[0][0]))
    try:
        yield Login(
            Database(replace(made.settings, user=role, password=PASSWORD)),
            past_settings(made, version),
            role,
        )
    finally:
        databases.drop(made)
        roles.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
