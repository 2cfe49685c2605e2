"""The file utilities the library and the applications share (hmfusion.ops.files): the lock with
an owner, the SHA-256 of a file, the atomic write."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest

from hmfusion.apps import manifest, outputs
from hmfusion.apps.train import checkpoint
from hmfusion.ops import build, files, wisdom


def test_sha256_file_matches_hashlib_over_several_blocks(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # more than one 1 MiB block, and a partial one
    (tmp_path / "x.bin").write_bytes(data)
    assert files.sha256_file(tmp_path / "x.bin") == hashlib.sha256(data).hexdigest()


def test_one_sha256_and_one_lock_for_the_library_and_the_apps():
    # Review: the chunked SHA-256 was written three times and the lock twice (one of them racy).
    assert manifest.sha256_file is files.sha256_file
    assert checkpoint.sha256_file is files.sha256_file
    for module in (build, manifest, checkpoint, outputs):
        assert not hasattr(module, "_sha256") and not hasattr(module, "fcntl")


@pytest.mark.skipif(files.fcntl is None, reason="no advisory file locks here")
def test_a_lock_file_removed_before_it_was_locked_is_not_taken(tmp_path, monkeypatch):
    # Review: the build lock flocked the file it had opened without checking it was still the
    # one at the path; when its last holder removed it in between (a failed build releasing),
    # this process "held" a deleted file while the next one created and locked a new one: two
    # builds into one folder.
    lock = tmp_path / "hmfusion.lock"
    real_flock = files.fcntl.flock
    calls = []

    def flock_after_the_holder_left(handle, operation):
        if not calls:
            os.unlink(lock)  # the last holder releases between our open and our flock
        calls.append(handle)
        return real_flock(handle, operation)

    monkeypatch.setattr(files.fcntl, "flock", flock_after_the_holder_left)
    with build._build_lock(lock, timeout=5):
        assert len(calls) == 2  # the first (removed) file was let go, the lock retried
        assert lock.exists()
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(RuntimeError, match="has been held by pid"):  # a second build waits
            with build._build_lock(lock, timeout=0):
                pass
    assert not lock.exists()


def test_without_advisory_locks_a_lock_whose_owner_is_gone_is_broken(tmp_path, monkeypatch):
    # Review: the branch without flock (Windows) called os.open(..., O_EXCL) outside the try,
    # so FileExistsError escaped and a lock left by a dead owner was never broken.
    monkeypatch.setattr(files, "fcntl", None)
    lock = tmp_path / "hmfusion.lock"
    dead = {"pid": os.getpid(), "host": socket.gethostname(), "started": "not this process"}
    lock.write_text(json.dumps(dead))
    with build._build_lock(lock, timeout=5):
        assert json.loads(lock.read_text())["started"] == files._start_time(os.getpid())
        with pytest.raises(files.LockHeld, match=f"pid {os.getpid()}"):  # a live owner holds
            files.lock_file(lock, timeout=0)
    assert not lock.exists()


def test_an_output_directory_is_locked_with_the_shared_lock(tmp_path):
    # The output lock records the same owner as the build lock and names it when refusing.
    first = outputs.OutputDirectory(tmp_path / "out")
    first.open()
    lock = tmp_path / ".out.lock"
    assert json.loads(lock.read_text())["host"] == socket.gethostname()
    with pytest.raises(outputs.UsageError, match=f"another run \\(pid {os.getpid()} on "):
        outputs.OutputDirectory(tmp_path / "out").open()
    first.discard()
    assert not lock.exists()


@pytest.mark.parametrize("follow_umask", [True, False])
def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, follow_umask):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with files.atomic_write(target, follow_umask=follow_umask) as staged:
            staged.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    with files.atomic_write(target, follow_umask=follow_umask) as staged:
        staged.write_text("new")
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]
    expected = 0o666 & ~files.umask() if follow_umask else 0o600
    assert os.stat(target).st_mode & 0o777 == expected


def test_wisdom_files_stay_private(tmp_path):
    # wisdom._write kept mkstemp's 0600 before it used the shared atomic write; it still does.
    wisdom._write(tmp_path / "w.json", {"device_type": "cpu"}, {})
    assert os.stat(tmp_path / "w.json").st_mode & 0o777 == 0o600


def test_one_reader_of_the_cpus_identity(monkeypatch):
    # Review: /proc/cpuinfo was parsed three times (wisdom, build, bench) with three fallbacks.
    import platform

    import torch

    from hmfusion.apps.bench import engine
    from hmfusion.ops import cpuinfo

    two_cores = (
        "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse2 avx2\n\n"
        "processor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse2 avx2\n"
    )
    monkeypatch.setattr(cpuinfo, "_cpuinfo", lambda: two_cores)
    assert wisdom.fingerprint()["cpu"] == "Some CPU 9000"
    assert engine._machine(torch.device("cpu"))["cpu"] == "Some CPU 9000"
    # the text the build folder's name hashes is what it was (no rebuild for anyone)
    assert build._cpu_fingerprint() == "flags\t\t: fpu sse2 avx2\nmodel name\t: Some CPU 9000"
    monkeypatch.setattr(cpuinfo, "_cpuinfo", lambda: None)  # no /proc (macOS, Windows)
    assert wisdom.fingerprint()["cpu"] == (platform.processor() or platform.machine())
    assert build._cpu_fingerprint() == platform.processor()
