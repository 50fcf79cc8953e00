"""Files written atomically (temp file, fsync, rename), keeping a bounded number of timestamped backups."""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
import time
from pathlib import Path
from typing import Literal


def write_atomic(path: str | Path, text: str, *, backups: int = 0) -> None:
    """Replace ``path`` with ``text`` so a crash at any moment leaves either the old or the new file.

    With ``backups > 0`` the previous version is kept as ``<name>.<timestamp>.bak`` and only the newest
    ``backups`` of those are kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if backups > 0 and path.exists():
            stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.6f}"[1:]
            os.link(path, path.with_name(f"{path.name}.{stamp}.bak"))
            for old in sorted(path.parent.glob(f"{path.name}.*.bak"))[:-backups]:
                old.unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class _HeldLibc:
    """libc's ``renameat2``, ``open``, ``read`` and ``close`` called through ``ctypes.PyDLL``: the calling thread keeps
    the GIL, so no other thread of the host runs between two of them. :func:`write_if_unchanged` swaps its version in,
    checks what it displaced and swaps a newer save back with them: a thread of this process (a test's editor, a
    plugin) never reads the interim file. (``ctypes.CDLL`` calls, and Python's own I/O, release the GIL at each system
    call, and reacquiring it can take a switch interval, 5 ms, under load: a thread reading the file then could see
    the host's version in place of the save being put back.)"""

    def __init__(self) -> None:
        libc = ctypes.PyDLL(None, use_errno=True)
        self.renameat2 = libc.renameat2  # glibc >= 2.28; AttributeError elsewhere
        self.renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
        self.open = libc.open
        self.open.argtypes = (ctypes.c_char_p, ctypes.c_int)
        self.read = libc.read
        self.read.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
        self.read.restype = ctypes.c_ssize_t
        self.close = libc.close
        self.close.argtypes = (ctypes.c_int,)


_libc: _HeldLibc | Literal[False] | None = None  # None: not looked up yet; False: not available


def _held_libc() -> _HeldLibc | None:
    global _libc
    if _libc is None:
        try:
            _libc = _HeldLibc()
        except (OSError, AttributeError):  # not glibc >= 2.28 (or not Linux)
            _libc = False
    return _libc or None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the files at ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``, the GIL kept); False
    where the platform or the file system cannot."""
    libc = _held_libc()
    if libc is None:
        return False
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # not on this file system or kernel
        return False
    raise OSError(err, os.strerror(err), str(b))


def _read_held(path: Path) -> str | None:
    """:func:`_read` with the GIL kept throughout (after a successful :func:`_exchange`, so libc is there)."""
    libc = _held_libc()
    assert libc is not None
    fd = libc.open(os.fsencode(path), os.O_RDONLY | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return None
        raise OSError(err, os.strerror(err), str(path))
    parts = []
    buf = ctypes.create_string_buffer(1 << 16)
    try:
        while True:
            n = libc.read(fd, buf, len(buf))
            if n == 0:
                break
            if n < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                raise OSError(err, os.strerror(err), str(path))
            parts.append(ctypes.string_at(buf, n))
    finally:
        libc.close(fd)
    return b"".join(parts).decode("utf-8", "surrogateescape")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None


def write_if_unchanged(path: str | Path, text: str, expected: str | None, *,
                       backups: int = 0) -> tuple[bool, str | None]:
    """Replace ``path`` with ``text`` (atomically, as :func:`write_atomic`) only while its content is still
    ``expected`` (``None``: the file must not exist). Returns ``(True, text)`` when written, else ``(False, what
    the file holds now)`` and the file is left to the other writer.

    This is a compare-and-swap against writers that do not lock (a user saving the file in an editor). The content is
    compared right before the new file goes in; on Linux it goes in with ``renameat2(RENAME_EXCHANGE)`` and the file it
    displaced is compared again, so a save that lands in between (by rename, or in place: its truncation shows) is put
    back, never lost. Elsewhere a save landing in the microseconds between the comparison and the rename is lost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if expected is None:
            try:
                os.link(tmp, path)  # never replaces: a file created meanwhile wins
            except FileExistsError:
                return False, _read(path)
        else:
            current = _read(path)
            if current != expected:  # the common conflict, found before the other version is moved at all
                return False, current
            try:
                swapped = _exchange(tmp, path)
            except FileNotFoundError:  # the file was deleted meanwhile
                return False, None
            if swapped:  # from here until the file is settled, the GIL is kept (see _HeldLibc)
                displaced = _read_held(tmp)
                if displaced != expected:
                    # Someone saved since ``expected`` was read: give the file back. Whatever the swap-back brings
                    # out is ours, or an even newer save, which then goes back in its turn.
                    _exchange(tmp, path)
                    back = _read_held(tmp)
                    if back != text:
                        _exchange(tmp, path)
                        return False, back
                    return False, displaced
                _keep_backup(path, tmp, backups)  # the swap left the previous version at the temp name
            else:  # no atomic swap here: a save landing between the check above and this rename is lost
                if backups > 0:
                    os.link(path, _backup_name(path))
                    _prune_backups(path, backups)
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True, text


def _backup_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.6f}"[1:]
    return path.with_name(f"{path.name}.{stamp}.bak")


def _prune_backups(path: Path, backups: int) -> None:
    for old in sorted(path.parent.glob(f"{path.name}.*.bak"))[:-backups]:
        old.unlink(missing_ok=True)


def _keep_backup(path: Path, previous: Path, backups: int) -> None:
    """``previous`` (the version just replaced, swapped out to a temp name) becomes the newest backup."""
    if backups > 0:
        os.replace(previous, _backup_name(path))
        _prune_backups(path, backups)


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
