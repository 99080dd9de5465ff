"""Cloud endpoints (cloud.py): which pool connections by transaction, and the URL the
prod stack may export: user, password, host and database named, an sslmode that encrypts."""

from __future__ import annotations

import psycopg.conninfo
import pytest

from cicd_db import cloud
from cicd_db.errors import ConfigError
from cicd_db.settings import ConnectionSettings, from_url


@pytest.mark.parametrize(
    ("host", "port", "pooled"),
    [
        ("db.supabase.co", 6543, True),
        ("db.supabase.co", 6542, False),
        ("db.supabase.co", 5432, False),
        ("ep-cool-42-pooler.us-east-2.aws.neon.tech", 5432, True),
        ("ep-cool-42.us-east-2.aws.neon.tech", 5432, False),
        ("ep-cool-42.db-pooler.example", 5432, False),  # only the first label counts
        ("pooler-ep.neon.tech", 5432, False),
        ("localhost-pooler", 5432, True),  # a host of one label
    ],
)
def test_is_transaction_pooler(host: str, port: int, pooled: bool) -> None:
    assert cloud.is_transaction_pooler(ConnectionSettings(host, port, "db", "u")) is pooled


@pytest.mark.parametrize(
    ("url", "allow_insecure", "expected"),
    [
        ("postgresql://u:pw@h/db", False, "postgresql://u:pw@h/db?sslmode=require"),
        (
            "postgresql://u:pw@h/db?options=endpoint%3Dep",
            False,
            "postgresql://u:pw@h/db?options=endpoint%3Dep&sslmode=require",
        ),
        (
            "postgresql://u:pw@h/db?sslmode=verify-ca",
            False,
            "postgresql://u:pw@h/db?sslmode=verify-ca",
        ),
        ("postgresql://u:pw@h/db?sslmode=disable", True, "postgresql://u:pw@h/db?sslmode=disable"),
    ],
)
def test_check_cloud_url(url: str, allow_insecure: bool, expected: str) -> None:
    assert cloud.check_cloud_url(url, what="databaseUrl", allow_insecure=allow_insecure) == (
        expected
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://u@h/db",
            "the databaseUrl 'postgresql://u@h/db' needs a user and a password, as in "
            "postgresql://USER:PASSWORD@HOST/DATABASE",
        ),
        (
            "postgresql://:hunter2@h/db",
            "the databaseUrl 'postgresql://:***@h/db' needs a user and a password, as in "
            "postgresql://USER:PASSWORD@HOST/DATABASE",
        ),
        (
            "postgresql://u:pw@h/db?sslmode=prefer",
            "the databaseUrl would connect with the URL's sslmode, prefer, which does not "
            "encrypt; use sslmode=require (or verify-ca, verify-full), or set "
            "cicd-db:allowInsecure true",
        ),
        (
            "https://u:pw@h/db",
            "the databaseUrl must start with postgresql:// or postgres://",
        ),
    ],
)
def test_check_cloud_url_bad(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        cloud.check_cloud_url(url, what="databaseUrl")
    assert str(raised.value).startswith(message), str(raised.value)


def test_check_cloud_url_reads_sslmode_from_the_whole_query() -> None:
    url = "postgresql://u:pw@h/db?sslmode=disable&application_name=a?b"
    with pytest.raises(ConfigError, match="the URL's sslmode, disable, which does not encrypt"):
        cloud.check_cloud_url(url, what="databaseUrl")


@pytest.mark.parametrize(
    ("url", "environ", "pooled"),
    [
        ("postgresql://u@h1:5432,h2:6543/db", {}, True),
        ("postgresql://u@h1,ep-x-pooler.neon.tech/db", {}, True),
        ("postgresql://u@h1:5432,h2:5433/db", {}, False),
        ("postgresql:///db", {"PGHOST": "ep-x-pooler.neon.tech"}, True),
        ("postgresql:///db", {"PGHOST": "h", "PGPORT": "6543"}, True),
        ("postgresql://u@h/db", {"PGPORT": "6543"}, True),
        ("postgresql:///db", {"PGHOST": "h"}, False),
    ],
)
def test_is_transaction_pooler_with_several_hosts_and_none(
    url: str, environ: dict, pooled: bool
) -> None:
    assert cloud.is_transaction_pooler(from_url(url), environ) is pooled


@pytest.mark.parametrize(
    ("url", "environ", "allow_insecure", "expected"),
    [
        # The stack's readers have not the operator's environment: the URL names the sslmode.
        ("postgresql://u:pw@h/db", {"PGSSLMODE": "verify-full"}, False, "sslmode=verify-full"),
        ("postgresql://u:pw@h/db", {}, False, "sslmode=require"),
        ("postgresql://u:pw@h/db", {"PGSSLMODE": "disable"}, True, "sslmode=disable"),
        # The URL's sslmode is what libpq uses: PGSSLMODE does not count.
        (
            "postgresql://u:pw@h/db?sslmode=require",
            {"PGSSLMODE": "disable"},
            False,
            "sslmode=require",
        ),
    ],
)
def test_check_cloud_url_judges_the_effective_sslmode(
    url: str, environ: dict, allow_insecure: bool, expected: str
) -> None:
    checked = cloud.check_cloud_url(
        url, what="databaseUrl", allow_insecure=allow_insecure, environ=environ
    )
    assert checked.endswith(expected) and checked.count("sslmode=") == 1


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"PGSSLMODE": "disable"},
            "the databaseUrl would connect with PGSSLMODE, disable, which does not encrypt",
        ),
        ({"PGSSLMODE": "prefer"}, "the databaseUrl would connect with PGSSLMODE, prefer"),
        ({"PGSSLMODE": "bogus"}, "PGSSLMODE='bogus' is not an sslmode; use one of"),
    ],
)
def test_check_cloud_url_refuses_pgsslmode_that_does_not_encrypt(
    environ: dict, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        cloud.check_cloud_url("postgresql://u:pw@h/db", what="databaseUrl", environ=environ)
    assert str(raised.value).startswith(message), str(raised.value)


def test_check_cloud_url_keeps_a_hash_where_libpq_reads_it() -> None:
    """libpq has no fragments: `db#note` is the database's name, and stays it (the sslmode
    written before the `#` made the database `db`, and the sslmode `require#note`)."""
    url = cloud.check_cloud_url("postgresql://u:pw@h/db#note", what="x", environ={})
    assert psycopg.conninfo.conninfo_to_dict(url) == {
        **psycopg.conninfo.conninfo_to_dict("postgresql://u:pw@h/db#note"),
        "sslmode": "require",
    }
    assert psycopg.conninfo.conninfo_to_dict(url)["dbname"] == "db#note"


@pytest.mark.parametrize(
    ("url", "environ"),
    [
        ("postgresql://u:pw@h/db?sslrootcert=system", {"PGSSLMODE": "require"}),
        ("postgresql://u:pw@h/db?sslrootcert=system", {"PGSSLMODE": "verify-ca"}),
        ("postgresql://u:pw@h/db?sslrootcert=system&sslmode=require", {}),
    ],
)
def test_check_cloud_url_refuses_sslrootcert_system_beside_a_weaker_sslmode(
    url: str, environ: dict[str, str]
) -> None:
    """libpq refuses sslrootcert=system with any sslmode but verify-full: exported so, every
    reader of the stack would fail to connect, after `pulumi up` succeeded (helper-153)."""
    with pytest.raises(ConfigError, match="use sslmode=verify-full"):
        cloud.check_cloud_url(url, what="databaseUrl", environ=environ)
    exported = cloud.check_cloud_url(
        "postgresql://u:pw@h/db?sslrootcert=system", what="databaseUrl", environ={}
    )
    assert psycopg.conninfo.conninfo_to_dict(exported)["sslmode"] == "verify-full"
