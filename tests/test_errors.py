"""The errors' own rules: one printable line whatever a message quotes, and names checked
before anything is sent (errors.check_name), for any text (hypothesis)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cicd_db import errors
from cicd_db.errors import (
    MAX_NAME_BYTES,
    ConfigError,
    UsageError,
    check_name,
    check_range,
    check_time,
    one_line,
)


@given(st.text())
def test_one_line_is_one_printable_line_and_leaves_printable_text_alone(text: str) -> None:
    shown = one_line(text)
    assert shown.isprintable() and "\n" not in shown
    assert (shown == text) == text.isprintable()


@given(st.text(max_size=600) | st.binary(max_size=50).map(lambda b: b.decode("latin-1")))
def test_a_name_is_taken_or_refused_on_one_line_that_never_quotes_it(name: str) -> None:
    """Taken exactly when PostgreSQL can store and index it (not empty, no NUL, valid
    Unicode, at most MAX_NAME_BYTES as UTF-8); refused with a UsageError that names the
    argument, is one printable line, and does not echo the name."""
    try:
        encoded = name.encode()
    except UnicodeEncodeError:
        encoded = None
    fits = bool(name) and "\x00" not in name and encoded is not None
    fits = fits and len(encoded or b"") <= MAX_NAME_BYTES
    try:
        check_name("stage", name)
    except UsageError as refused:
        message = str(refused)
        assert not fits, message
        assert message.startswith("`stage` ") and message.isprintable(), message
        assert len(name) < 3 or name not in message, message
        assert isinstance(refused, ValueError)
        return
    assert fits


@pytest.mark.parametrize("value", [None, "x"])
def test_an_optional_name_left_out_is_taken(value: str | None) -> None:
    check_name("stage", value, optional=True)


def test_an_empty_name_is_told_how_to_leave_it_out_when_it_may_be() -> None:
    with pytest.raises(UsageError, match=r"^`stage` is empty; give a name, or leave `stage` out$"):
        check_name("stage", "", optional=True)
    with pytest.raises(UsageError, match=r"^`stage` is empty; give a name$"):
        check_name("stage", "")


class _Lying(str):
    """A str whose own methods lie about it: the checks use str's."""

    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        return b"x"

    def __contains__(self, part: object) -> bool:  # type: ignore[override]
        return False

    def __len__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (_Lying("a" * (MAX_NAME_BYTES + 1)), "is 1,001 bytes"),
        (_Lying("a\0b"), "holds a NUL byte (at character 2)"),
        (_Lying(""), "is empty"),
    ],
    ids=["too-long", "nul", "empty"],
)
def test_a_str_subclass_is_checked_by_what_it_holds(name: str, said: str) -> None:
    with pytest.raises(UsageError, match=re.escape(said)):
        check_name("name", name)


def test_an_error_told_after_what_was_done_keeps_its_kind_and_arguments() -> None:
    """`after` leads with what had happened; braces in it are text, not fields, and the
    error's own arguments are still phrased by whoever prints it (the CLI as flags)."""
    error = UsageError(
        "{retries} must be {what}", arguments=["retries"], values={"what": "a {number}"}
    )
    told = error.after("applied {2} migrations")
    assert told is error and isinstance(told, UsageError) and told.exit_code == 2
    assert str(told) == "applied {2} migrations: `retries` must be a {number}"
    assert told.phrased(lambda name: f"--{name}") == (
        "applied {2} migrations: --retries must be a {number}"
    )
    plain = ConfigError("cannot write {x}").after("done {y}")
    assert str(plain) == "done {y}: cannot write {x}"


# Found by the mutation run of 2026-12-05, night (docs/testing.md).

# -- check_name: the exact words, the first NUL, the surrogate's place, the size's end ---


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # The first NUL's place (x_check_name 35), and the words (x_check_name 39, 40, 41).
        (
            "a\0b\0",
            "`stage` holds a NUL byte (at character 2), which PostgreSQL text cannot hold; "
            "remove it",
        ),
        # The surrogate's place, counted from 1 (x_check_name 47, 48).
        (
            "ab\ud800c",
            "`stage` is not valid Unicode (a lone surrogate at character 3); give it as text",
        ),
    ],
)
def test_check_name_says_where_the_bad_character_is(name: str, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        check_name("stage", name)
    assert str(refused.value) == message


def test_check_name_takes_exactly_max_name_bytes() -> None:
    """MAX_NAME_BYTES is taken, one byte more is not (x_check_name 49)."""
    check_name("stage", "a" * MAX_NAME_BYTES)
    check_name("stage", "é" * (MAX_NAME_BYTES // 2))
    with pytest.raises(UsageError, match=re.escape(f"is {MAX_NAME_BYTES + 1:,} bytes")):
        check_name("stage", "a" * (MAX_NAME_BYTES + 1))


@pytest.mark.parametrize("value", [1.5, 30.0, True, False, "30", None, b"3"])
def test_a_count_that_is_not_a_whole_number_is_refused_by_its_type(value: object) -> None:
    """From Python, a float, a bool or a string went on to a database error or a bare
    TypeError (`retention.prune(conn, keep_days=1.5)`); each count is refused naming the
    argument, the range and the type given, never the value."""
    with pytest.raises(UsageError) as refused:
        check_range("keep_days", value, 36_600)  # type: ignore[arg-type]
    assert str(refused.value) == (
        f"`keep_days` takes a whole number from 1 to 36600, not a {type(value).__name__}"
    )
    check_range("keep_days", 30, 36_600)


class _Raising(tzinfo):
    """A time zone whose code fails: the caller's bug, told as a bad time."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no offset")


def test_a_failing_time_zone_is_named_by_its_class() -> None:
    with pytest.raises(UsageError) as refused:
        check_time("at", datetime(2026, 1, 1, tzinfo=_Raising()))
    assert str(refused.value).startswith(
        "`at` has a time zone, _Raising, that gives no valid UTC offset (RuntimeError)"
    )


@pytest.mark.parametrize(
    "value",
    [datetime(1, 1, 1, 15, tzinfo=UTC), datetime(9999, 12, 31, 23, tzinfo=UTC)],
    ids=["early", "late"],
)
def test_a_time_out_of_range_names_the_range(value: datetime) -> None:
    with pytest.raises(UsageError) as refused:
        check_time("now", value)
    assert str(refused.value) == (
        f"`now` {value.isoformat()} is out of range: cicd-db takes times from "
        "0001-01-08 to 9999-12-24 in UTC, which read back in any time zone"
    )


def test_a_naive_time_or_no_time_is_refused_with_the_reason() -> None:
    at = datetime(2026, 1, 1, 9, 0)
    with pytest.raises(UsageError) as refused:
        check_time("at", at)
    assert str(refused.value) == (
        f"`at` {at.isoformat()} has no time zone; give an aware datetime "
        "(datetime.now(UTC)): a naive one would be read in the session's time zone"
    )
    with pytest.raises(UsageError) as refused:
        check_time("at", "2026-12-06")
    assert str(refused.value) == "`at` must be a datetime, not str"


def test_an_error_hiding_its_secrets_keeps_its_fields_and_hides_the_rest() -> None:
    """`hiding` passes the template's own text and every value through the redaction, and
    leaves the fields of its arguments for the front end to name its way."""
    hide = lambda text: text.replace("Sekr3t", "***")  # noqa: E731
    error = ConfigError(
        "{where} refused u:Sekr3t; fix {database_url}",
        arguments=["database_url"],
        values={"where": "h:Sekr3t@db"},
    ).hiding(hide)
    assert str(error) == "h:***@db refused u:***; fix `database_url`"
    assert (
        error.phrased(lambda name: "--database-url") == "h:***@db refused u:***; fix --database-url"
    )
    plain = ConfigError("cannot connect to [u:Sekr3t@db]: {braces} stay").hiding(hide)
    assert str(plain) == "cannot connect to [u:***@db]: {braces} stay"


@given(value=st.text(), done=st.text())
def test_values_fill_their_fields_with_or_without_arguments(value: str, done: str) -> None:
    """A message of values and no argument showed its fields as written (`cannot list
    migrations folder {folder}`, helper-131); with arguments too, the values fill theirs.
    A value's braces, and those of what came before (`after`), are never read as fields."""
    alone = errors.ConfigError("cannot list {folder}: denied", values={"folder": value})
    assert str(alone) == f"cannot list {value}: denied"
    both = errors.ConfigError("{folder} and {flag}", arguments=["flag"], values={"folder": value})
    assert str(both) == f"{value} and `flag`"
    assert str(alone.after(done)) == f"{done}: cannot list {value}: denied"


@pytest.mark.parametrize("suspected", [True, False], ids=["suspected", "named"])
def test_a_setting_that_stopped_a_statement_is_told_with_where_to_reset_it(
    suspected: bool,
) -> None:
    """cli.main's and cursors.cancels_named's words where the session cannot say where the
    setting comes from: the setting named, "if no one cancelled it" only where suspected."""
    said = errors.told_with_setting(
        "canceling statement due to user request", "statement_timeout", suspected=suspected
    )
    assert said == (
        "database error: canceling statement due to user request; "
        + ("if no one cancelled it, " if suspected else "")
        + "statement_timeout stopped it, set for this session by the role, the database, the "
        "server or the connection's options (pg_settings' source for statement_timeout tells "
        "which; perhaps a migration left it): reset it there, and run again"
    )


def test_a_setting_is_told_as_named_unless_said_to_be_suspected() -> None:
    said = errors.told_with_setting("canceling statement due to lock timeout", "lock_timeout")
    assert said == errors.told_with_setting(
        "canceling statement due to lock timeout", "lock_timeout", suspected=False
    )
    assert "if no one cancelled it" not in said
