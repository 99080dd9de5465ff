"""Migration files: names, versions, discovery, reading, and the next file."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cicd_db import cli, migrations
from cicd_db.errors import ConfigError

from ..utils import examples, write_migrations
from .shared import MEBIBYTE


def test_discover_skips_hidden_files_other_files_and_folders(tmp_path: Path) -> None:
    """What is not named as a migration; a folder or a link named as one is refused
    (test_an_entry_named_like_a_migration_that_is_no_file_is_refused)."""
    write_migrations(
        tmp_path,
        {
            "0001_a.sql": "SELECT 1;\n",
            ".0002_editor_backup.sql": "SELECT 2;\n",
            "README.md": "notes\n",
        },
    )
    (tmp_path / "0003_folder").mkdir()
    (tmp_path / ".0004_hidden.sql").mkdir()
    assert [m.filename for m in migrations.discover(tmp_path)] == ["0001_a.sql"]


def test_files_are_planned_when_read_unless_told_not_to(tmp_path: Path) -> None:
    """`read` and `discover` refuse a statement a file may not hold at once; told not to
    plan (the runner), they read it, and `steps` plans and refuses it on first use."""
    write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (i int);\nCOMMIT;\n"})
    path = tmp_path / "0001_a.sql"
    for read in (lambda: migrations.read(path, 1, "a"), lambda: migrations.discover(tmp_path)):
        with pytest.raises(ConfigError, match="COMMIT ends or starts a transaction"):
            read()
    lazy = [
        migrations.read(path, 1, "a", planned=False),
        *migrations.discover(tmp_path, planned=False),
    ]
    for migration in lazy:
        assert migration.planned is None
        with pytest.raises(ConfigError, match="COMMIT ends or starts a transaction"):
            migration.steps  # noqa: B018


def test_new_migration_numbers_in_the_folders_width(tmp_path: Path) -> None:
    first = migrations.new_migration(tmp_path, "add_runs")
    assert first.name == "0001_add_runs.sql"
    assert first.read_text() == migrations.NEW_FILE_HEADER.format(name="add_runs")
    (tmp_path / "000041_old.sql").write_text("")
    (tmp_path / "notes.txt").write_text("")
    second = migrations.new_migration(tmp_path, "idx", transactional=False)
    assert second.name == "000042_idx.sql"
    assert second.read_text().startswith("-- cicd-db: no-transaction\n-- What this changes")


def test_new_migration_numbers_above_files_discover_refuses_for_their_names(
    tmp_path: Path,
) -> None:
    """`0002_x.SQL` or a version in Arabic-Indic digits is refused by discover, with a new
    name to take; `migrate new` numbered beside them as if they were not there, so the
    file renamed as told then shared a version with the new one."""
    (tmp_path / "0001_a.sql").write_text("SELECT 1;\n")
    (tmp_path / "0002_x.SQL").write_text("SELECT 1;\n")
    assert migrations.new_migration(tmp_path, "b").name == "0003_b.sql"
    (tmp_path / "\u0660\u0660\u0660\u0665_y.sql").write_text("SELECT 1;\n")
    assert migrations.new_migration(tmp_path, "c").name == "0006_c.sql"
    (tmp_path / "0007_z.sql.orig").write_text("SELECT 1;\n")  # an editor's: not a migration
    assert migrations.new_migration(tmp_path, "d").name == "0007_d.sql"
    (tmp_path / "0009_w.sql ").write_text("SELECT 1;\n")  # refused: renamed, it is 0009
    (tmp_path / "0010_v.s\u200bql").write_text("SELECT 1;\n")
    assert migrations.new_migration(tmp_path, "e").name == "0011_e.sql"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "-x",
            "migration name '-x' may hold only ASCII letters, digits, '_', '.' and '-', and must",
        ),
        ("a b", "migration name 'a b' may hold only ASCII letters"),
        ("café", "migration name 'café' may hold only ASCII letters"),
    ],
    ids=["leading-dash", "space", "not-ascii"],
)
def test_new_migration_refuses_bad_names(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        migrations.new_migration(tmp_path, name)


def test_discover_refuses_a_folder_without_migrations(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("notes\n")
    with pytest.raises(ConfigError) as empty:
        migrations.discover(tmp_path)
    assert str(empty.value) == (
        f"migrations folder {tmp_path} holds no <version>_<name>.sql file; add one, or pass the "
        "right folder with `migrations_dir`"
    )
    # A braced folder name is a value, not a field of the message.
    braced = tmp_path / "{x}"
    braced.mkdir()
    with pytest.raises(ConfigError) as odd:
        migrations.discover(braced)
    assert cli.phrased(odd.value) == (
        f"migrations folder {braced} holds no <version>_<name>.sql file; add one, or pass the "
        "right folder with --migrations-dir"
    )


@pytest.mark.parametrize(
    "name",
    [
        "0002_b.s\u200bql",
        "0002_b.sq\u00adl",
        "0002_b.\u200esql",
        "0002_b.sql\x1b[0m",
        "0002_b.sql\u180e",
        "0002_b.sql\U000e0001",
        "0002_b.sql\u034f",
        "0002_b.sql\u3164",
        "0002_b.s\x7fql",
        "0002_b.s\u200bql ",
    ],
    ids=[
        "zero-width-space",
        "soft-hyphen",
        "direction-mark",
        "colour-code-after",
        "mongolian-vowel-separator",
        "language-tag",
        "combining-grapheme-joiner",
        "hangul-filler",
        "control-character",
        "inside-and-after",
    ],
)
def test_characters_drawn_as_nothing_in_sql_are_refused_not_skipped(
    tmp_path: Path, name: str
) -> None:
    """`ls` shows `0002_b.sql`; Python's suffix is another: the file was skipped, never
    applied, and `up` said "up to date" (helper-143). An editor's leftover that shows
    as another extension (`.sql.orig`, `.sql~`) is still skipped."""
    write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n", name: "SELECT 2;\n"})
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value) == (
        f"migration file {name!r} holds characters drawn as nothing (control or format "
        "characters) in its extension; rename it to 0002_b.sql"
    )
    (tmp_path / name).rename(tmp_path / "0002_b.sql.orig")
    (tmp_path / "0003_c.sql~").write_text("SELECT 3;\n")
    assert [m.filename for m in migrations.discover(tmp_path)] == ["0001_a.sql"]


@pytest.mark.parametrize("tail", [" ", "\n", "\t", "  \n", ".", " .", "\u200b", "\ufeff"])
def test_white_space_after_sql_is_refused_not_skipped(tmp_path: Path, tail: str) -> None:
    """`0002_b.sql ` was neither applied, listed nor warned about; nor were `0002_b.sql.`
    and a zero-width space after it (helper-131)."""
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    (folder / f"0002_b.sql{tail}").write_text("SELECT 2;\n")
    with pytest.raises(ConfigError) as refused:
        migrations.discover(folder)
    assert str(refused.value) == (
        f"migration file {'0002_b.sql' + tail!r} ends in white space, dots or characters drawn "
        "as nothing after .sql; rename it to 0002_b.sql"
    )


def test_a_file_that_cannot_be_read_is_named_as_the_input(tmp_path: Path) -> None:
    """An OSError reading a file reached the CLI as "cannot write the output" (exit 1)."""
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    (folder / "0002_x.sql").symlink_to("/proc/self/mem")  # reading it fails: EIO
    with pytest.raises(ConfigError, match=r"^cannot read migration file 0002_x\.sql: "):
        migrations.discover(folder)


def test_what_took_a_files_place_after_discovery_is_refused_not_waited_for(
    tmp_path: Path,
) -> None:
    """Discovery looks at an entry, then reads it: a FIFO put in its place meanwhile (an
    editor's save, a checkout) blocked the run forever before it connected, and a file
    removed meanwhile was told as one the user may not read. Neither is read."""
    import os

    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    path = folder / "0001_a.sql"
    path.unlink()
    with pytest.raises(ConfigError) as refused:
        migrations.read(path, 1, "a")
    assert str(refused.value) == (
        "migration file 0001_a.sql was removed or replaced while it was read (a checkout or "
        "an editor's save at the same time?); run again"
    )
    os.mkfifo(path)  # no writer: an open that waits for one never returns
    with pytest.raises(ConfigError) as refused:
        migrations.read(path, 1, "a")
    assert str(refused.value) == (
        "0001_a.sql in the migrations folder is not a regular file; rename it to end "
        "otherwise than .sql, or remove it"
    )


_DISCOVER_AS_NOBODY = """
import os, pwd, sys
from pathlib import Path
from cicd_db import migrations
from cicd_db.errors import ConfigError
if os.geteuid() == 0:  # root reads anything: discovery runs as nobody, as a user's would
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
try:
    migrations.discover(Path(sys.argv[1]))
    print("read")
except ConfigError as refused:
    print(f"ConfigError: {refused}")
"""


@pytest.mark.parametrize(
    "where",
    ["folder it may list, not enter", "link into a closed folder", "file it may not read"],
    ids=["folder-not-entered", "link-into-closed-folder", "file-not-readable"],
)
def test_a_file_the_user_may_not_reach_is_named_as_the_input(where: str) -> None:
    """A folder its user may list but not enter (mode 744), or a link to a file in a
    folder it may not enter: looking at the entry fails (EACCES), which reached the CLI
    as "cannot write the output" (exit 1), not as the input it is (exit 2)."""
    import os
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="cicd-db-test-"))  # a folder another user can reach
    top.chmod(0o755)
    folder, closed = top / "migrations", top / "closed"
    folder.mkdir()
    closed.mkdir()
    try:
        if where.startswith("link"):
            (folder / "0001_a.sql").write_text("SELECT 1;\n")
            (closed / "0002_b.sql").write_text("SELECT 2;\n")
            (folder / "0002_b.sql").symlink_to(closed / "0002_b.sql")
            closed.chmod(0o700 if os.geteuid() == 0 else 0o000)
            unreachable = "0002_b.sql"
        elif where.startswith("file"):
            (folder / "0001_a.sql").write_text("SELECT 1;\n")
            (folder / "0001_a.sql").chmod(0o000)
            unreachable = "0001_a.sql"
        else:
            (folder / "0001_a.sql").write_text("SELECT 1;\n")
            folder.chmod(0o744 if os.geteuid() == 0 else 0o444)
            unreachable = "0001_a.sql"
        done = subprocess.run(
            [sys.executable, "-c", _DISCOVER_AS_NOBODY, str(folder)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (done.returncode, done.stderr) == (0, ""), done
        assert done.stdout == (
            f"ConfigError: cannot read migration file {unreachable}: Permission denied; let "
            "the user running cicd-db read it (and enter the folders on its way), or remove "
            "it from the folder\n"
        )
    finally:
        folder.chmod(0o755)
        closed.chmod(0o755)
        shutil.rmtree(top)


def test_a_folder_that_is_a_file_is_said_to_be_one(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;\n")
    with pytest.raises(ConfigError, match=r"0001_a\.sql is a file, not a folder; "):
        migrations.discover(tmp_path / "0001_a.sql")


def test_new_migration_and_discover_refuse_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        migrations.new_migration(tmp_path / "nope", "x")
    assert str(missing.value) == (
        f"migrations folder {tmp_path / 'nope'} does not exist; create it, or pass `migrations_dir`"
    )
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError) as a_file:
        migrations.new_migration(tmp_path / "a_file", "x")
    assert str(a_file.value) == (
        f"migrations folder {tmp_path / 'a_file'} is a file, not a folder; pass `migrations_dir`"
    )
    with pytest.raises(ConfigError) as not_there:
        migrations.discover(tmp_path / "nope")
    assert str(not_there.value) == (
        f"migrations folder {tmp_path / 'nope'} does not exist; "
        "pass `migrations_dir` DIR or run from the repository root"
    )


@pytest.mark.parametrize(
    ("made", "said"),
    [
        (lambda p: p.symlink_to(p.parent / "gone"), "is a symbolic link to {gone}, which does not exist"),
        (lambda p: p.symlink_to("/nope/{x}}{"), "is a symbolic link to /nope/{{x}}}}{{, which does not exist"),
        (lambda p: (p.symlink_to(p.parent / "b"), (p.parent / "b").symlink_to(p)), "is a loop of symbolic links"),
        (lambda p: p.parent.joinpath("f").write_text(""), "has a file, not a folder, on its path"),
        (lambda p: p.write_text(""), "is a file, not a folder"),
        (lambda p: None, "does not exist"),
    ],
    ids=["link-to-nothing", "link-with-braces", "loop-of-links", "file-on-path", "file", "missing"],
)  # fmt: skip
def test_a_folder_that_is_not_one_is_told_why_by_every_command(
    tmp_path: Path, made: Callable[[Path], object], said: str
) -> None:
    """A link that leads nowhere and a loop of links were told "does not exist", which
    sends one looking for a folder that is there; each case names what the path is."""
    folder = tmp_path / "m"
    made(folder)
    if "on its path" in said:
        folder = tmp_path / "f" / "m"
    said = said.format(gone=tmp_path / "gone")
    for call in (migrations.discover, lambda f: migrations.new_migration(f, "x")):
        with pytest.raises(ConfigError) as refused:
            call(folder)  # type: ignore[operator]
        assert str(refused.value).startswith(f"migrations folder {folder} {said}; "), refused.value
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in {"m", "b", "f"}) == []


def test_new_migration_says_why_it_cannot_write(tmp_path: Path) -> None:
    name = "x" * 300  # a valid name, too long for the file system
    with pytest.raises(ConfigError) as refused:
        migrations.new_migration(tmp_path, name)
    assert str(refused.value) == (
        f"cannot write {tmp_path / f'0001_{name}.sql'}: File name too long; check the folder"
    )


# Eight processes, each making 25 files through the CLI as soon as all are ready. With
# the folder's lock taken out, this failed 4 runs of 4 on a loaded machine, where 48
# processes started in rounds of 8 (their start-ups spread them out) failed 1 of 3;
# and it costs about 2.5 s of CPU instead of 14 (a sixth of the start-ups).
_MAKER = """import sys
from cicd_db import cli
folder, me = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
codes = [cli.main(["migrate", "new", f"m{me}_{n}", "--migrations-dir", folder]) for n in range(25)]
sys.exit(max(codes))
"""


@pytest.mark.slow
def test_new_migrations_made_at_once_each_get_their_own_number(tmp_path: Path) -> None:
    """`migrate new` in eight processes at once: each file its own version, and each run
    names the file it made (two at once took the same number in more than half of the
    tries, and both said they made it)."""
    makers = [
        subprocess.Popen(
            [sys.executable, "-c", _MAKER, str(tmp_path), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    said = []
    try:
        for maker in makers:
            assert maker.stdout is not None and maker.stdout.readline() == "ready\n"
        for maker in makers:  # all at once
            assert maker.stdin is not None
            maker.stdin.write("go\n")
            maker.stdin.flush()
        for maker in makers:
            out, _ = maker.communicate(timeout=60)
            assert maker.returncode == 0, out
            said += [Path(line).name for line in out.splitlines()]
    finally:  # none left waiting for its start
        for maker in makers:
            maker.kill()
            maker.communicate()
    made = sorted(path.name for path in tmp_path.glob("*.sql"))
    assert [name.split("_")[0] for name in made] == [f"{n:04d}" for n in range(1, 201)], made
    assert sorted(said) == made


def test_new_migration_cut_short_leaves_no_file(tmp_path: Path) -> None:
    """A new file whose header cannot be written whole (a full disk; here a real limit on
    file size) was left empty or cut short, and the next `up` applied it."""
    script = (
        "import resource, sys; from pathlib import Path; "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10)); "
        "from cicd_db import cli; sys.exit(cli.main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "migrate",
            "new",
            "add_jobs",
            "--migrations-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr == (
        f"error: cannot write {tmp_path / '0001_add_jobs.sql'}: File too large; check the folder\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"\xe9 SELECT 1;\n", 1),
        ("é;\n".encode(), None),
        (b"SELECT 1;\n-- \xc3", 2),
        (b"-- " + b"x" * (MEBIBYTE - 5) + b"\n\xc3", 2),
        (b"-- " + b"x" * (MEBIBYTE - 5) + "\né\n".encode() + b"SELECT 1;\n-- \xe9\n", 4),
    ],
    ids=[
        "first-byte",
        "valid-from-the-first-byte",
        "cut-short-at-the-end",
        "cut-short-at-one-mebibyte",
        "after-a-character-across-slices",
    ],
)
def test_text_that_is_not_utf8_is_found_wherever_it_is(
    tmp_path: Path, data: bytes, line: int | None
) -> None:
    """Checked a mebibyte at a time: a character may span two slices, the last may end short."""
    (tmp_path / "0001_bytes.sql").write_bytes(data)
    if line is None:
        assert migrations.discover(tmp_path)[0].data == data
        return
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value) == (
        f"migration file 0001_bytes.sql is not UTF-8 (line {line}); save it as UTF-8"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00SELECT 1;\n", "holds a NUL byte (line 1)"),
        (b"\nSELECT 1;\x00\nSELECT 2;\x00\n", "holds a NUL byte (line 2)"),
        (b"\n\xe9\n", "is not UTF-8 (line 2)"),
        (
            b"-- cicd-db: no-transaction",
            "is marked no-transaction but holds 0 statements besides SET and RESET; it must "
            "hold exactly one: add the statement it is for, or remove the marker",
        ),
        (
            "SELECT 1;\n".encode("utf-16"),
            "is UTF-16 (as Windows PowerShell 5 writes with `>`); save it as UTF-8",
        ),
        ("SELECT 1;\n".encode("utf-16-be").join([b"\xfe\xff", b""]), "is UTF-16 ("),
    ],
    ids=[
        "nul-first",
        "first-of-two-nuls",
        "not-utf8-after-a-newline",
        "only-the-marker",
        "utf16-little-endian",
        "utf16-big-endian",
    ],
)
def test_read_refuses_what_postgresql_cannot_take(
    tmp_path: Path, data: bytes, message: str
) -> None:
    (tmp_path / "0001_bytes.sql").write_bytes(data)
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value).startswith(f"migration file 0001_bytes.sql {message}")


def test_the_largest_version_the_history_holds_is_taken(tmp_path: Path) -> None:
    write_migrations(tmp_path, {f"{migrations.MAX_VERSION}_last.sql": "SELECT 1;\n"})
    assert [m.version for m in migrations.discover(tmp_path)] == [2**63 - 1]


@pytest.mark.parametrize("name", ["add_index.sql", "add_index.SQL", "add_index.sql.sql"])
def test_new_migration_adds_the_extension_once(tmp_path: Path, name: str) -> None:
    assert migrations.new_migration(tmp_path, name).name == "0001_add_index.sql"


def test_new_migration_never_numbers_beyond_bigint(tmp_path: Path) -> None:
    write_migrations(tmp_path, {f"{migrations.MAX_VERSION}_last.sql": "SELECT 1;\n"})
    with pytest.raises(ConfigError) as refused:
        migrations.new_migration(tmp_path, "next")
    assert str(refused.value) == (
        f"cannot number a new migration in {tmp_path}: its newest version, "
        f"{migrations.MAX_VERSION}, leaves none above it that the history can hold (at most "
        f"{migrations.MAX_VERSION}, a bigint); renumber that file lower if it is not applied yet"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"{migrations.MAX_VERSION}_last.sql"
    ]


@pytest.mark.parametrize(
    ("filename", "suggestion"),
    [
        ("\uff10\uff10\uff10\uff11_x.sql", "0001_x.sql"),
        ("\u0660\u0660\u0660\u0662_y.sql", "0002_y.sql"),
        ("1\u0663_z.sql", "13_z.sql"),
    ],
    ids=["full-width", "arabic-indic", "mixed"],
)
def test_versions_are_ascii_digits(tmp_path: Path, filename: str, suggestion: str) -> None:
    (tmp_path / filename).write_text("SELECT 1;\n")
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value).endswith(f"0-9; rename it, for example to {suggestion}")
    # `migrate new` numbers above it, as it numbers above the file renamed as suggested.
    number = suggestion.split("_")[0]
    after = f"{int(number) + 1:0{len(number)}d}_next.sql"
    assert migrations.new_migration(tmp_path, "next").name == after


# -- file names and new names: properties over what a person may type ------------------

# Digits of every kind (ASCII, full-width, Arabic-Indic), the characters that end or
# separate a name's parts, letters of other scripts, and what a shell lets through.
NAME_CHARACTERS = st.sampled_from(
    [*"0123456789", *"\uff10\uff11\u0661\u0969", *"_.-", *"aZé中", *" #%$'\"\\:;,!?&*()[]{}~`"]
)
# White space after .sql read as another extension, and the file was skipped unseen.
EXTENSIONS = st.sampled_from(
    [
        *(".sql", ".SQL", ".Sql", "", ".sql.bak", ".txt", ".sql ", ".sql\n", ".sql\t", ".SQL "),
        *(".s\u200bql", ".sql\x1b[0m", ".\u202esql", ".sq\u00adl.orig"),
    ]
)
# What is drawn as nothing in a name: colour codes, controls, format characters.
_INVISIBLE = re.compile(r"\x1b\[[0-9;]*m|[\x00-\x1f\u00ad\u200b-\u200f\u202a-\u202e\ufeff]")


def _suggested(message: str) -> str | None:
    """The file name a refusal tells the user to rename to, if it names one."""
    names = re.findall(r"(?:rename it to|for example(?: to)?) ([^\s;,<>]+\.sql)\b", message)
    return names[-1] if names else None


@settings(max_examples=examples(400), deadline=None)
@given(stem=st.text(NAME_CHARACTERS, min_size=1, max_size=40), extension=EXTENSIONS)
def test_any_file_name_is_taken_or_refused_in_one_line_with_a_name_that_works(
    tmp_path_factory: pytest.TempPathFactory, stem: str, extension: str
) -> None:
    """A file name is taken exactly when it is `<ASCII digits>_<name>.sql` with a
    version the history can hold; otherwise discover refuses it in one line, or skips
    it when it is no .sql file at all. A name the refusal suggests is itself taken."""
    filename = stem + extension
    assume(filename not in (".", ".."))  # the folder itself and its parent
    folder = tmp_path_factory.mktemp("names")
    (folder / filename).write_text("SELECT 1;\n")
    try:
        found = migrations.discover(folder)
    except ConfigError as refused:
        message = str(refused)
        assert "\n" not in message
        shown = _INVISIBLE.sub("", filename).rstrip()
        if not shown.lower().endswith(".sql") or filename.startswith("."):
            assert "holds no <version>_<name>.sql file" in message
            return
        assert "holds no <version>_<name>.sql file" not in message  # shown as .sql: not skipped
        well_formed = migrations.files.FILE_NAME.fullmatch(filename)
        assert not well_formed or int(well_formed["version"]) > migrations.MAX_VERSION, message
        suggestion = _suggested(message)
        if suggestion is not None:
            assert suggestion != filename
            other = tmp_path_factory.mktemp("suggested")
            (other / suggestion).write_text("SELECT 1;\n")
            assert [m.filename for m in migrations.discover(other)] == [suggestion], message
        return
    [migration] = found
    assert migration.filename == filename
    match = migrations.files.FILE_NAME.fullmatch(filename)
    assert match is not None
    assert (migration.version, migration.name) == (int(match["version"]), match["name"])


@settings(max_examples=examples(300), deadline=None)
@given(name=st.text(NAME_CHARACTERS, min_size=0, max_size=40))
def test_any_new_name_makes_a_file_discover_takes_or_is_refused_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    folder = tmp_path_factory.mktemp("new")
    try:
        path = migrations.new_migration(folder, name)
    except ConfigError as refused:
        assert "\n" not in str(refused)
        assert list(folder.iterdir()) == []  # nothing half-written
        return
    [migration] = migrations.discover(folder)
    assert migration.path == path
    assert migration.version == 1


@pytest.mark.parametrize(
    ("statement", "target"),
    [
        ("CREATE INDEX CONCURRENTLY i ON t (c);", ("i", None, "t")),
        ("create unique index concurrently if not exists I on S.T (c);", ("i", "s", "t")),
        ('CREATE INDEX CONCURRENTLY "My I" ON ONLY "My S" . "My T" (c);', ("My I", "My S", "My T")),
        ("CREATE INDEX CONCURRENTLY i ON ÉTÉ (c);", ("i", None, "ÉtÉ")),
        ("CREATE INDEX CONCURRENTLY i\n  -- the table\n  ON public.t (c);", ("i", "public", "t")),
    ],
    ids=["plain", "qualified-folded", "quoted-only", "non-ascii", "comment"],
)
def test_the_index_and_table_a_no_transaction_file_builds(
    tmp_path: Path, statement: str, target: tuple[str, str | None, str]
) -> None:
    path = tmp_path / "0001_idx.sql"
    path.write_text(f"-- cicd-db: no-transaction\n{statement}\n")
    assert migrations.files.index_target(migrations.read(path, 1, "idx"))[:3] == target


def test_an_entry_named_like_a_migration_that_is_no_file_is_refused(tmp_path: Path) -> None:
    """A link to a file that is not there (one not checked out) or a folder, named as a
    migration: skipped, it was a migration never applied, with exit 0, while `migrate
    new` numbered past it. Refused, naming it and the fix."""
    (tmp_path / "0001_a.sql").write_text("SELECT 1;\n")
    (tmp_path / "0009_gone.sql").symlink_to(tmp_path / "nowhere.sql")
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value) == (
        f"migration file 0009_gone.sql is a link to {str(tmp_path / 'nowhere.sql')!r}, which "
        "does not exist (a file that was not checked out?); restore what it points to, or "
        "remove the link"
    )
    (tmp_path / "0009_gone.sql").unlink()
    (tmp_path / "0005_dir.sql").mkdir()
    with pytest.raises(ConfigError, match=r"^0005_dir\.sql in the migrations folder is a folder; "):
        migrations.discover(tmp_path)
    (tmp_path / "0005_dir.sql").rmdir()
    (tmp_path / "0002_b.sql").symlink_to(tmp_path / "0001_a.sql")  # a link to a file is one
    assert [m.version for m in migrations.discover(tmp_path)] == [1, 2]


@pytest.mark.parametrize("key", ["'k1'", '"k1"', ":key", "k\\1", "`echo k1`"])
def test_a_restrict_key_that_is_not_a_plain_word_is_refused(tmp_path: Path, key: str) -> None:
    """psql reads a quoted key, a variable or a backquoted command before it compares
    keys; the runner does not guess what it reads, and refuses the line up front."""
    path = tmp_path / "0001_dump.sql"
    path.write_text(f"\\restrict {key}\nCREATE TABLE t (a int);\n\\unrestrict {key}\n")
    with pytest.raises(ConfigError) as refused:
        _ = migrations.read(path, 1, "dump").steps
    assert str(refused.value) == (
        "migration file 0001_dump.sql, line 1: \\restrict is run by psql as a meta-command, "
        "and its key is not a plain word, as pg_dump writes it; write the \\restrict KEY and "
        "\\unrestrict KEY lines as pg_dump writes them, or remove them"
    )


def test_a_migration_file_that_is_a_loop_of_links_is_named_so(tmp_path: Path) -> None:
    """A link to itself was told "a link to '0002_b.sql', which does not exist (a file
    that was not checked out?)" (helper-131), where the folder's own loop was named."""
    folder = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1;\n"})
    (folder / "0002_b.sql").symlink_to("0002_b.sql")
    with pytest.raises(ConfigError) as refused:
        migrations.discover(folder)
    assert str(refused.value) == (
        "migration file 0002_b.sql is a loop of symbolic links; point it at the file, or "
        "remove the link"
    )


def test_a_link_to_a_folder_named_as_a_migration_is_told_as_a_folder(tmp_path: Path) -> None:
    """A link to a folder that is there is no link to nothing: it is named as the folder
    it leads to, not as a file that was not checked out."""
    (tmp_path / "0001_a.sql").write_text("SELECT 1;\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "0002_b.sql").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError) as refused:
        migrations.discover(tmp_path)
    assert str(refused.value) == (
        "0002_b.sql in the migrations folder is a folder; rename it to end otherwise than "
        ".sql, or remove it"
    )


def test_an_entry_that_cannot_be_looked_at_again_is_named_as_the_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why an entry is no regular file is asked after discovery looked at it: an entry gone
    by then (a checkout at the same time) is said to be gone, and one that cannot be looked
    at (a name too long, a folder on its way closed meanwhile) is named as the input, never
    as the output's failure."""
    from cicd_db.migrations import files

    assert files._not_a_file(tmp_path / "0001_a.sql") == (
        "migration file 0001_a.sql was removed or replaced while it was read (a checkout or "
        "an editor's save at the same time?); run again"
    )
    long = tmp_path / ("0001_" + "a" * 300 + ".sql")  # stat: ENAMETOOLONG
    assert files._not_a_file(long).startswith(
        f"cannot read migration file {long.name}: File name too long; "
    )

    def closed(path: object) -> bool:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.os.path, "lexists", closed)
    assert files._not_a_file(tmp_path / "0002_b.sql") == (
        "cannot read migration file 0002_b.sql: Permission denied; let the user running "
        "cicd-db read it (and enter the folders on its way), or remove it from the folder"
    )


@pytest.mark.parametrize(
    "name",
    ["0009_w.sql ", "0009_w\x1b[.sql"],
    ids=["space-after", "escape-eating-the-dot"],
)
def test_new_migration_numbers_above_one_refused_file(tmp_path: Path, name: str) -> None:
    """Each name discover takes for a migration (to refuse it) counts alone, not only
    beside another with a higher number: white space after `.sql`, or `.sql` a
    terminal's escape sequence would swallow (discover's suffix is still `.sql`)."""
    (tmp_path / "0001_a.sql").write_text("SELECT 1;\n")
    (tmp_path / name).write_text("SELECT 1;\n")
    with pytest.raises(ConfigError):
        migrations.discover(tmp_path)
    assert migrations.new_migration(tmp_path, "next").name == "0010_next.sql"


def test_an_editors_leftover_sorted_before_a_migration_hides_none_after_it(
    tmp_path: Path,
) -> None:
    """A file that is no migration (`0001_a.sql.orig`) sorts between two that are: it is
    skipped, and the listing goes on past it."""
    write_migrations(
        tmp_path, {"0001_a.sql": "SELECT 1;\n", "0001_a.sql.orig": "", "0002_b.sql": "SELECT 2;\n"}
    )
    assert [m.version for m in migrations.discover(tmp_path)] == [1, 2]


def test_a_byte_order_mark_added_or_removed_matches_with_mixed_line_ends(tmp_path: Path) -> None:
    """A mark added or removed since the file was applied changes no statement, also in a
    file whose line ends are mixed (no conversion Git makes, so no other way matches)."""
    import hashlib

    raw = b"SELECT 1;\r\nSELECT 2;\n"
    path = tmp_path / "0001_a.sql"
    path.write_bytes(raw)
    assert migrations.read(path, 1, "a").matches(hashlib.sha256(b"\xef\xbb\xbf" + raw).hexdigest())
    path.write_bytes(b"\xef\xbb\xbf" + raw)
    assert migrations.read(path, 1, "a").matches(hashlib.sha256(raw).hexdigest())
