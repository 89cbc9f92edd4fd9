"""Atomic file writes (spec 4.7): a crash at any moment leaves the old file or the new one.

Public API (stable; other packages' writers use it, e.g. ``.onnx_adapter`` files and their
JSON sidecars)::

    from vera_ref.atomic import atomic_write, atomic_file

    atomic_write(path, lambda f: f.write(payload))      # callable gets a binary file object

    with atomic_file(path) as f:                         # or as a context manager
        f.write(part1)
        f.write(part2)
    # on normal exit: flushed, fsync'ed, renamed over ``path``; on any exception: nothing
    # changes at ``path`` and no temporary is left behind; the exception propagates.

How (spec 4.7):

1. The data goes into a temporary in the target's own folder (so the final rename stays on
   one file system). On Linux it is an anonymous ``O_TMPFILE`` inode: it has no name while
   it is written, so a process killed in the middle (``SIGKILL``, power loss) leaves nothing
   behind. Elsewhere, or where the file system refuses ``O_TMPFILE``, it is a file named
   ``.<target name>.vera-tmp-<pid>-<random hex>`` created with ``O_EXCL``.
2. ``fsync`` of the data; the anonymous inode is then given such a name with ``linkat``.
3. ``os.replace`` of the named temporary over the target (atomic on POSIX and Windows), then
   ``fsync`` of the folder so the rename itself is durable.

Every name a writer creates is unique (pid + 64 random bits), so concurrent writers to one
target never collide: the last rename wins and the target is always one whole file.
A writer killed between steps 2 and 3 (a window of microseconds), or any writer of the
fallback kind killed while writing, leaves a named temporary; ``sweep`` removes temporaries
of our naming whose writer process is gone (or that are older than ``STALE_AFTER_S``), and
every ``atomic_write`` sweeps the target's folder for temporaries of the same target first.

The new file gets the mode an ordinary ``open(path, "wb")`` would give it (0o666 & ~umask).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import time
from typing import BinaryIO, Callable, Iterator

TEMP_MARK = ".vera-tmp-"
USE_O_TMPFILE = True  # set False to always use named temporaries (tests of the fallback, odd file systems)
STALE_AFTER_S = 24 * 3600  # a temporary older than this is stale even if its pid is alive (pid reuse)
_TEMP_RE = re.compile(r"^\.(?P<target>.+)" + re.escape(TEMP_MARK) + r"(?P<pid>[0-9]+)-[0-9a-f]{16}$")


def temp_name(target_name: str) -> str:
    """A fresh temporary name for the file ``target_name`` (a base name, not a path)."""
    return f".{target_name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(8)}"


def is_temporary(name: str) -> bool:
    """True when ``name`` (a base name) is a temporary of this module's naming."""
    return _TEMP_RE.match(name) is not None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep it
    return True


def sweep(directory: str | os.PathLike, target_name: str | None = None, *, now: float | None = None) -> list[str]:
    """Remove stale temporaries of our naming in ``directory`` (of ``target_name`` only, if given).

    Stale: the writer's pid no longer runs on this machine, or the file is older than
    ``STALE_AFTER_S``. Temporaries of live writers (this process included) are kept.
    Returns the names removed. Never raises for files that vanish meanwhile.
    """
    removed = []
    now = time.time() if now is None else now
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_RE.match(name)
        if m is None or (target_name is not None and m.group("target") != target_name):
            continue
        full = os.path.join(directory, name)
        try:
            old = now - os.lstat(full).st_mtime > STALE_AFTER_S
            if old or not _pid_alive(int(m.group("pid"))):
                os.unlink(full)
                removed.append(name)
        except OSError:
            pass
    return removed


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename is still atomic
    finally:
        os.close(dfd)


def _open_anonymous(directory: str) -> int | None:
    """An O_TMPFILE descriptor in ``directory``, or None where unsupported."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not USE_O_TMPFILE:
        return None
    try:
        return os.open(directory, flag | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT, errno.EACCES,
                         errno.EPERM, errno.ENOTSUP):
            return None  # file system or kernel without O_TMPFILE: use a named temporary
        raise


def _link_anonymous(fd: int, directory: str, name: str) -> bool:
    """Give the O_TMPFILE inode ``fd`` the name ``directory/name`` (linkat through /proc)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return False
    try:
        # dst_dir_fd makes Python use linkat(); follow_symlinks resolves the /proc magic link
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
        return True
    except OSError:
        return False
    finally:
        os.close(dfd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Context manager: a binary file whose contents replace ``path`` atomically on normal exit.

    On an exception inside the block nothing at ``path`` changes, the temporary is removed and
    the exception propagates. See the module docstring for the guarantees.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if not base:
        raise IsADirectoryError(errno.EISDIR, "not a file name", path)
    sweep(directory, base)
    fd = _open_anonymous(directory)
    anonymous = fd is not None
    tmp = os.path.join(directory, temp_name(base))
    if fd is None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0), 0o666)
    named = not anonymous
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if anonymous:
                if not _link_anonymous(f.fileno(), directory, os.path.basename(tmp)):
                    # linkat refused (no /proc, or no permission): copy into a named temporary
                    named = True
                    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as g:
                        pos = 0
                        while chunk := os.pread(f.fileno(), 1 << 20, pos):
                            g.write(chunk)
                            pos += len(chunk)
                        g.flush()
                        os.fsync(g.fileno())
                named = True
        os.replace(tmp, path)
        named = False
    except BaseException:
        if named:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` with a binary file object; its contents replace ``path`` atomically.

    ``write`` may call ``f.write`` any number of times. If it raises, ``path`` is unchanged and
    no temporary remains. ``atomic_write(p, lambda f: f.write(data))`` writes bytes.
    """
    with atomic_file(path) as f:
        write(f)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``data`` replaces ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_file", "sweep", "is_temporary", "temp_name",
           "TEMP_MARK", "STALE_AFTER_S", "USE_O_TMPFILE"]
