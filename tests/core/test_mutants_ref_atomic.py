"""Kill-tests for vera_ref/atomic.py (spec 4.7), issue 15.

Every way a write can fail (in the caller's block, at open, at linkat, at the rename) leaves the old
file intact and no temporary; both kinds of temporary (anonymous O_TMPFILE and named) and the copy
fallback write the whole data with the mode ``open(path, "wb")`` gives; ``sweep`` removes exactly the
stale temporaries of our naming.
"""
import errno
import os
import re
import subprocess
import sys

import pytest

from vera_ref import atomic

HAS_TMPFILE = hasattr(os, "O_TMPFILE")


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def _entries(folder):
    return sorted(os.listdir(folder))


def _assert_eio_keeps_the_old_file(tmp_path, data: bytes) -> None:
    """Writing ``data`` over out.bin fails with EIO; the old bytes stay and nothing else is left."""
    (tmp_path / "out.bin").write_bytes(b"old")
    with pytest.raises(OSError) as err:
        atomic.atomic_write_bytes(tmp_path / "out.bin", data)
    assert err.value.errno == errno.EIO
    assert (tmp_path / "out.bin").read_bytes() == b"old" and _entries(tmp_path) == ["out.bin"]


def _dead_pid():
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


@pytest.fixture(params=["anonymous", "named"])
def kind(request, monkeypatch):
    if request.param == "anonymous" and not HAS_TMPFILE:
        pytest.skip("no O_TMPFILE here")
    monkeypatch.setattr(atomic, "USE_O_TMPFILE", request.param == "anonymous")
    return request.param


# --- names ---------------------------------------------------------------------------------

def test_temporary_names_follow_the_spec_pattern():
    # spec 4.7: `.<target name>.vera-tmp-<pid>-<16 hex>`
    names = {atomic.temp_name("a.safetensors") for _ in range(50)}
    assert len(names) == 50  # 64 random bits each
    for n in names:
        assert re.fullmatch(rf"\.a\.safetensors\.vera-tmp-{os.getpid()}-[0-9a-f]{{16}}", n), n
        assert atomic.is_temporary(n)
    assert atomic.TEMP_MARK == ".vera-tmp-"


@pytest.mark.parametrize("name, ok", [
    (".a.bin.vera-tmp-12-0123456789abcdef", True),
    (".x.vera-tmp-1-ffffffffffffffff", True),
    ("a.bin.vera-tmp-12-0123456789abcdef", False),      # no leading dot
    (".a.bin.vera-tmp-12-0123456789abcde", False),      # 15 hex
    (".a.bin.vera-tmp-12-0123456789abcdef0", False),    # 17 hex
    (".a.bin.vera-tmp-12-0123456789ABCDEF", False),     # upper case
    (".a.bin.vera-tmp--0123456789abcdef", False),       # no pid
    (".vera-tmp-12-0123456789abcdef", False),           # no target
    (".a.bin", False), ("a.bin", False),
])
def test_is_temporary(name, ok):
    assert atomic.is_temporary(name) is ok


def test_pid_alive():
    assert atomic._pid_alive(os.getpid()) is True
    assert atomic._pid_alive(os.getppid()) is True
    assert atomic._pid_alive(_dead_pid()) is False
    assert atomic._pid_alive(1) is True  # init: alive, whether we may signal it or not


def test_pid_alive_when_the_system_cannot_tell(monkeypatch):
    def refuse(pid, sig):
        raise PermissionError(errno.EPERM, "not permitted")
    monkeypatch.setattr(os, "kill", refuse)
    assert atomic._pid_alive(os.getpid() + 1) is True

    def odd(pid, sig):
        raise OSError(errno.EINVAL, "odd")
    monkeypatch.setattr(os, "kill", odd)
    assert atomic._pid_alive(os.getpid() + 1) is True


# --- sweep ---------------------------------------------------------------------------------

def test_sweep_removes_only_stale_temporaries_of_the_target(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    names = {
        "stale_a": f".a.bin{atomic.TEMP_MARK}{dead}-0123456789abcdef",
        "live_a": f".a.bin{atomic.TEMP_MARK}{live}-fedcba9876543210",
        "stale_b": f".b.bin{atomic.TEMP_MARK}{dead}-0123456789abcdef",
        "not_ours": f".a.bin{atomic.TEMP_MARK}{dead}-0123",
        "plain": "a.bin",
    }
    for n in names.values():
        (tmp_path / n).write_bytes(b"x")
    assert atomic.sweep(tmp_path, "a.bin") == [names["stale_a"]]
    assert atomic.sweep(tmp_path, "a.bin") == []
    assert atomic.sweep(tmp_path, "c.bin") == []
    assert _entries(tmp_path) == sorted(n for k, n in names.items() if k != "stale_a")
    assert atomic.sweep(str(tmp_path)) == [names["stale_b"]]
    assert _entries(tmp_path) == sorted([names["live_a"], names["not_ours"], names["plain"]])


def test_sweep_age_limit_is_strict(tmp_path):
    # a live writer's temporary is stale when older than STALE_AFTER_S (one day), not at exactly one day
    assert atomic.STALE_AFTER_S == 86400
    t = tmp_path / f".a.bin{atomic.TEMP_MARK}{os.getpid()}-0123456789abcdef"
    t.write_bytes(b"x")
    os.utime(t, (1_000_000_000, 1_000_000_000))
    assert atomic.sweep(tmp_path, now=1_000_000_000 + 86400) == []
    assert atomic.sweep(tmp_path, now=1_000_000_000 + 86399) == []
    assert t.exists()
    assert atomic.sweep(tmp_path, now=1_000_000_000 + 86400.5) == [t.name]
    assert not t.exists()


def test_sweep_uses_the_clock_when_no_time_is_given(tmp_path):
    t = tmp_path / f".a.bin{atomic.TEMP_MARK}{os.getpid()}-0123456789abcdef"
    t.write_bytes(b"x")
    os.utime(t, (1_000_000_000, 1_000_000_000))  # 2001: older than a day
    assert atomic.sweep(tmp_path) == [t.name]
    t.write_bytes(b"x")  # now: fresh, and our own pid
    assert atomic.sweep(tmp_path) == []


def test_sweep_never_raises(tmp_path):
    assert atomic.sweep(tmp_path / "missing") == []
    # a folder named like a stale temporary cannot be unlinked: skipped, the rest swept
    d = tmp_path / f".a.bin{atomic.TEMP_MARK}{_dead_pid()}-0123456789abcdef"
    d.mkdir()
    f = tmp_path / f".a.bin{atomic.TEMP_MARK}{_dead_pid()}-00000000000000ff"
    f.write_bytes(b"x")
    assert atomic.sweep(tmp_path) == [f.name]
    assert d.is_dir()


# --- writes --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 3 << 20])
def test_every_kind_writes_the_whole_data_with_the_default_mode(tmp_path, kind, size):
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    p = tmp_path / "out.bin"
    atomic.atomic_write_bytes(p, data)
    assert p.read_bytes() == data and _entries(tmp_path) == ["out.bin"]
    assert p.stat().st_mode & 0o777 == 0o666 & ~_umask()
    atomic.atomic_write(str(p), lambda f: (f.write(b"a"), f.write(b"bc")))
    assert p.read_bytes() == b"abc" and _entries(tmp_path) == ["out.bin"]


def test_a_write_sweeps_stale_temporaries_of_its_target_first(tmp_path, kind):
    stale = tmp_path / f".out.bin{atomic.TEMP_MARK}{_dead_pid()}-0123456789abcdef"
    stale.write_bytes(b"partial")
    with atomic.atomic_file(tmp_path / "out.bin") as f:
        assert not stale.exists()
        f.write(b"new")
    assert _entries(tmp_path) == ["out.bin"]


def test_the_data_and_the_folder_are_flushed_to_storage(tmp_path, kind, monkeypatch):
    # spec 4.7: flush the temporary to stable storage, then rename; the folder is synced after the rename
    synced = []
    real = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        if os.path.stat.S_ISDIR(st.st_mode):
            synced.append(("dir", os.path.exists(tmp_path / "out.bin")))
        else:
            synced.append(("file", st.st_size, os.path.exists(tmp_path / "out.bin")))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    atomic.atomic_write_bytes(tmp_path / "out.bin", b"12345")
    assert synced == [("file", 5, False), ("dir", True)]


def test_an_error_in_the_block_leaves_the_old_file_and_no_temporary(tmp_path, kind):
    p = tmp_path / "out.bin"
    p.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_file(p) as f:
            f.write(b"x" * (2 << 20))
            raise KeyboardInterrupt  # BaseException too
    assert p.read_bytes() == b"old" and _entries(tmp_path) == ["out.bin"]

    def write(f):
        f.write(b"partial")
        raise ValueError("bad data")
    with pytest.raises(ValueError, match=r"^bad data$"):
        atomic.atomic_write(p, write)
    assert p.read_bytes() == b"old" and _entries(tmp_path) == ["out.bin"]


def test_a_failed_rename_leaves_the_old_target_and_no_temporary(tmp_path, kind):
    target = tmp_path / "out.bin"
    target.mkdir()
    (target / "inside").write_bytes(b"keep")
    with pytest.raises(OSError) as err:
        atomic.atomic_write_bytes(target, b"new")
    assert err.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert _entries(tmp_path) == ["out.bin"] and (target / "inside").read_bytes() == b"keep"


def test_a_path_without_a_file_name_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError) as err:
        atomic.atomic_write_bytes(str(tmp_path) + os.sep, b"x")
    assert err.value.errno == errno.EISDIR and err.value.strerror == "not a file name"
    assert err.value.filename == str(tmp_path) + os.sep
    assert _entries(tmp_path) == []


def test_a_missing_folder_is_an_error_and_creates_nothing(tmp_path, kind):
    with pytest.raises(FileNotFoundError):
        atomic.atomic_write_bytes(tmp_path / "no" / "out.bin", b"x")
    assert _entries(tmp_path) == []


def test_a_named_temporary_is_never_reused(tmp_path, monkeypatch):
    # O_EXCL: a name that exists already is an error, never overwritten
    monkeypatch.setattr(atomic, "USE_O_TMPFILE", False)
    fixed = f".out.bin{atomic.TEMP_MARK}{os.getpid()}-0123456789abcdef"
    (tmp_path / fixed).write_bytes(b"someone else's")
    monkeypatch.setattr(atomic, "temp_name", lambda base: fixed)
    with pytest.raises(FileExistsError):
        atomic.atomic_write_bytes(tmp_path / "out.bin", b"x")
    assert (tmp_path / fixed).read_bytes() == b"someone else's"
    assert _entries(tmp_path) == [fixed]


@pytest.mark.skipif(not HAS_TMPFILE, reason="no O_TMPFILE here")
@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT, errno.EACCES,
                                  errno.EPERM, errno.ENOTSUP])
def test_a_file_system_without_o_tmpfile_falls_back_to_a_named_temporary(tmp_path, monkeypatch, code):
    real = os.open
    opened = []

    def fake_open(path, flags, mode=0o777, **kw):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            opened.append("anonymous")
            raise OSError(code, os.strerror(code))
        if flags & os.O_CREAT:
            opened.append(os.path.basename(path))
        return real(path, flags, mode, **kw)
    monkeypatch.setattr(os, "open", fake_open)
    atomic.atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert (tmp_path / "out.bin").read_bytes() == b"data" and _entries(tmp_path) == ["out.bin"]
    assert opened[0] == "anonymous" and len(opened) == 2 and atomic.is_temporary(opened[1])


@pytest.mark.skipif(not HAS_TMPFILE, reason="no O_TMPFILE here")
def test_other_o_tmpfile_errors_propagate(tmp_path, monkeypatch):
    real = os.open

    def fake_open(path, flags, mode=0o777, **kw):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EIO, "i/o error")
        return real(path, flags, mode, **kw)
    monkeypatch.setattr(os, "open", fake_open)
    _assert_eio_keeps_the_old_file(tmp_path, b"data")


@pytest.mark.skipif(not HAS_TMPFILE, reason="no O_TMPFILE here")
def test_o_tmpfile_opens_the_folder_read_write(tmp_path, monkeypatch):
    real = os.open
    seen = []

    def spy(path, flags, mode=0o777, **kw):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            seen.append((path, flags & os.O_ACCMODE, mode, bool(flags & getattr(os, "O_CLOEXEC", 0))))
        return real(path, flags, mode, **kw)
    monkeypatch.setattr(os, "open", spy)
    monkeypatch.setattr(atomic, "USE_O_TMPFILE", True)
    atomic.atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert seen == [(str(tmp_path), os.O_RDWR, 0o666, True)]


def _refuse_linkat(monkeypatch):
    """O_TMPFILE on, and linking the anonymous inode into the folder refused (EPERM), as some file
    systems and sandboxes do: the writer must fall back to copying into a named temporary."""
    monkeypatch.setattr(atomic, "USE_O_TMPFILE", True)

    def refuse(*a, **k):
        raise PermissionError(errno.EPERM, "no linkat")
    monkeypatch.setattr(os, "link", refuse)


@pytest.mark.skipif(not HAS_TMPFILE, reason="no O_TMPFILE here")
@pytest.mark.parametrize("how", ["link", "open-folder"])
def test_when_linkat_is_refused_the_data_is_copied_into_a_named_temporary(tmp_path, monkeypatch, how):
    if how == "link":
        _refuse_linkat(monkeypatch)
    else:
        monkeypatch.setattr(atomic, "USE_O_TMPFILE", True)
        real = os.open

        def fake_open(path, flags, mode=0o777, **kw):
            if flags == os.O_RDONLY and os.fspath(path) == str(tmp_path) and fake_open.calls == 0:
                fake_open.calls += 1
                raise PermissionError(errno.EACCES, "no folder fd")
            return real(path, flags, mode, **kw)
        fake_open.calls = 0
        monkeypatch.setattr(os, "open", fake_open)
    data = os.urandom((2 << 20) + 12345)  # more than one copy chunk
    atomic.atomic_write_bytes(tmp_path / "out.bin", data)
    assert (tmp_path / "out.bin").read_bytes() == data and _entries(tmp_path) == ["out.bin"]
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o666 & ~_umask()


@pytest.mark.skipif(not HAS_TMPFILE, reason="no O_TMPFILE here")
def test_link_anonymous_names_the_inode(tmp_path):
    fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"inode")
        assert _entries(tmp_path) == []
        assert atomic._link_anonymous(fd, str(tmp_path), "named") is True
        assert (tmp_path / "named").read_bytes() == b"inode"
        assert atomic._link_anonymous(fd, str(tmp_path), "named") is False  # exists: refused, no raise
        assert atomic._link_anonymous(fd, str(tmp_path / "missing"), "x") is False
    finally:
        os.close(fd)


def test_fsync_dir_never_raises(tmp_path):
    atomic._fsync_dir(str(tmp_path / "missing"))
    atomic._fsync_dir(str(tmp_path))


@pytest.mark.skipif(not HAS_TMPFILE, reason="no O_TMPFILE here")
def test_by_default_the_data_has_no_name_while_it_is_written(tmp_path):
    # spec 4.7: on Linux the reference writes into an anonymous O_TMPFILE inode, named only before the rename
    with atomic.atomic_file(tmp_path / "out.bin") as f:
        f.write(b"x" * 1000)
        f.flush()
        assert _entries(tmp_path) == []
    assert _entries(tmp_path) == ["out.bin"]


def test_asking_whether_a_writer_runs_sends_it_no_signal():
    # os.kill(pid, 0) only asks; any real signal would end this child (SIGHUP, SIGINT, ... all fatal to sleep)
    # the child restores the default (fatal) action of the usual signals: a parent run under nohup or a
    # test runner may have left some ignored, and ignored signals are inherited
    code = ("import signal, sys, time\n"
            "for s in ('SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGTERM', 'SIGUSR1', 'SIGUSR2', 'SIGPIPE', 'SIGALRM'):\n"
            "    signal.signal(getattr(signal, s), signal.SIG_DFL)\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        assert atomic._pid_alive(child.pid) is True
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.3)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def _open_fds():
    return sorted(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc here")
def test_no_file_descriptor_is_left_open(tmp_path, kind):
    before = _open_fds()
    for _ in range(3):
        atomic.atomic_write_bytes(tmp_path / "out.bin", b"data")
        with pytest.raises(ValueError):
            atomic.atomic_write(tmp_path / "out.bin", lambda f: (_ for _ in ()).throw(ValueError("x")))
        atomic._fsync_dir(str(tmp_path))
    assert _open_fds() == before


@pytest.mark.skipif(not HAS_TMPFILE, reason="no O_TMPFILE here")
def test_the_copy_fallback_flushes_its_named_copy_to_storage(tmp_path, monkeypatch):
    # spec 4.7: what is renamed over the target has been flushed to stable storage, whole
    _refuse_linkat(monkeypatch)
    synced = []
    real = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        if not os.path.stat.S_ISDIR(st.st_mode):
            synced.append((st.st_nlink, st.st_size))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    atomic.atomic_write_bytes(tmp_path / "out.bin", b"x" * 100)  # less than any write buffer
    assert synced == [(0, 100), (1, 100)]  # the anonymous inode, then its named copy, both whole
    assert (tmp_path / "out.bin").read_bytes() == b"x" * 100


@pytest.mark.skipif(not HAS_TMPFILE, reason="no O_TMPFILE here")
def test_an_error_while_copying_removes_the_named_copy(tmp_path, monkeypatch):
    _refuse_linkat(monkeypatch)

    def broken(fd, n, pos):
        raise OSError(errno.EIO, "read error")
    monkeypatch.setattr(os, "pread", broken)
    _assert_eio_keeps_the_old_file(tmp_path, b"new")
