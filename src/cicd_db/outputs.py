"""Where a command's answer goes: a file it writes (`-o PATH`), or a document on standard
output. Tables and lines for a person go through console.print_lines; these are files'
contents (a schema's SQL, the insights page, JSON and YAML), which their readers decode
as UTF-8 whatever the terminal's locale.

A file is written whole or not at all where that can be done without changing what the
file is: a new file, or a regular file of this user's with one name and no extended
attributes, is written beside itself, synced to disk, and renamed over, so a full disk,
a size limit, Ctrl-C or a power cut leaves the old one as it was and no part of the new
(unsynced, a power cut after the rename could leave an empty file on some file
systems). Anything else is written in
place, as `>` would: a file of another owner or with other names (a rename would take
the owner, the other names, the ACLs with it), a file whose folder this user cannot
write or that is mounted on its own (a container's bind mount), a pipe, a device,
`/dev/stdout`. A path that is the command's own standard output or error (`-o
/dev/stdout`, whatever it points at) is written to that stream, appending as the shell
opened it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# Errors that say the file cannot be replaced by a rename, though it may be written in
# place: the folder is not ours to write, or the file is a mount point of its own.
_NOT_BESIDE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EBUSY, errno.EXDEV}


# What stopped standard output (its reader gone, `| head`; a full disk; closed), once it
# did: from then on what a command writes there is discarded, and its work goes on to
# its end, so no run stops between two files for how its lines are read. cli.main
# forgets it before each command and tells it after (nothing for a reader that left).
lost_output: OSError | None = None


def take_lost_output() -> OSError | None:
    """What stopped standard output during the command, if anything; forgotten after."""
    global lost_output
    lost, lost_output = lost_output, None
    return lost


def write_out(text: str) -> None:
    """`text` on standard output (in the terminal's encoding), flushed; see lost_output."""
    _guarded(lambda: (sys.stdout.write(text), sys.stdout.flush()))


def print_document(text: str) -> None:
    """`text` on standard output as UTF-8 bytes whatever the locale (written in a Latin-1
    or ASCII locale's encoding, a name outside it failed the command, and one inside it
    made a file that is not UTF-8); see lost_output."""
    _guarded(lambda: _document_to(sys.stdout, text.encode("utf-8")))


def _guarded(write: Callable[[], object]) -> None:
    global lost_output
    if lost_output is not None:
        return
    try:
        write()
    except OSError as error:
        lost_output = error
        discard_standard_output()


def discard_standard_output() -> None:
    """Standard output to /dev/null: what is still buffered, and what Python flushes at
    exit, go nowhere. Without a descriptor (closed at the start, a test's), nothing to do."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)


def _document_to(stream: object, data: bytes) -> None:
    buffer: BinaryIO | None = getattr(stream, "buffer", None)
    if buffer is None:  # a stream of text alone (a test's StringIO): it takes text
        stream.write(data.decode("utf-8"))  # type: ignore[attr-defined]
        return
    stream.flush()  # type: ignore[attr-defined]
    buffer.write(data)
    buffer.flush()


def write_file(path: Path, text: str) -> None:
    """`text` into the file `path` as UTF-8 (see the module docstring). Raises OSError."""
    data = text.encode("utf-8")
    found = _found(path)
    if found is not None:
        if _is_stream(found, sys.stdout):  # `-o /dev/stdout`: as `-o -`, see lost_output
            _guarded(lambda: _document_to(sys.stdout, data))
            return
        if _is_stream(found, sys.stderr):
            _document_to(sys.stderr, data)
            return
        if not _replaceable(path, found):
            _in_place(path, data)
            return
    target, beside = _beside(path)
    try:
        # Private while it fills: the file's own mode is given once it is whole.
        descriptor = os.open(beside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        if found is None or error.errno not in _NOT_BESIDE:
            raise
        _in_place(path, data)
        return
    try:
        with os.fdopen(descriptor, "wb") as out:
            if found is not None and not _same_group(out.fileno(), found):
                beside.unlink()  # a shared folder's group would be lost: `>` keeps it
                _in_place(path, data)
                return
            out.write(data)
            os.fchmod(out.fileno(), stat.S_IMODE(found.st_mode) if found else _new_file_mode())
            out.flush()
            os.fsync(out.fileno())  # its bytes on disk before it takes the old one's name
        try:
            os.replace(beside, target)
        except OSError as error:
            if found is None or error.errno not in _NOT_BESIDE:
                raise
            beside.unlink()
            _in_place(path, data)
    except BaseException:
        beside.unlink(missing_ok=True)
        raise


def check_writable(path: Path) -> None:
    """Raise the OSError write_file would meet at `path`, without writing it: for a
    command that writes the file only after work nothing can undo (`migrate up
    --dump-schema`). The system decides, by the same opens (a file made beside it and
    removed, or the file opened as it stands): a folder, a missing folder, no right. A
    pipe or a device is not tried."""
    found = _found(path)
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if found is not None and any(_is_stream(found, s) for s in (sys.stdout, sys.stderr)):
        return
    if found is not None and not stat.S_ISREG(found.st_mode):
        # A pipe, a device: opening one to try it can end what reads it (a FIFO's reader
        # takes the close for the end) or block; it is written in place, as it comes.
        return
    if found is not None and not _replaceable(path, found):
        os.close(os.open(path, os.O_WRONLY))  # written in place: opened, not emptied
        return
    _, beside = _beside(path)
    try:
        os.close(os.open(beside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        if found is None or error.errno not in _NOT_BESIDE:
            raise
        os.close(os.open(path, os.O_WRONLY))  # in place, as write_file would; not emptied
    else:
        beside.unlink()


def _found(path: Path) -> os.stat_result | None:
    """What is at `path` (a link followed), or None when nothing is."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _beside(path: Path) -> tuple[Path, Path]:
    """The file `path` names (a link's target: the link is kept) and a new name beside
    it to write first; a short one, as the file's own may leave no room for more."""
    target = Path(os.path.realpath(path))
    return target, target.with_name(f".cicd-db-{os.urandom(6).hex()}.tmp")


def _same_group(descriptor: int, found: os.stat_result) -> bool:
    """Whether the new file has the old one's group, given it if need be (a member may)."""
    if os.fstat(descriptor).st_gid == found.st_gid:
        return True
    try:
        os.fchown(descriptor, -1, found.st_gid)
    except OSError:
        return False
    return True


def _is_stream(found: os.stat_result, stream: object) -> bool:
    """Whether `found` is the file behind `stream` (its descriptor's)."""
    try:
        mine = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # closed, or no descriptor
        return False
    return (mine.st_dev, mine.st_ino) == (found.st_dev, found.st_ino)


def _replaceable(path: Path, found: os.stat_result) -> bool:
    """Whether a rename over `path` leaves a file that is the same but for its text."""
    if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1 or found.st_uid != os.geteuid():
        return False
    if not os.access(path, os.W_OK):  # read-only: refused in place, as `>` refuses it
        return False
    listxattr = getattr(os, "listxattr", None)  # Linux's; macOS's Python has none
    if listxattr is None:
        return True
    try:
        # ACLs among them; an SELinux label is on every file, and a new one gets its own.
        return not [name for name in listxattr(path) if not name.startswith("security.")]
    except OSError:  # a file system without them
        return True


def _in_place(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)


def _new_file_mode() -> int:
    """The mode `open` gives a new file: 0o666 less the umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask
