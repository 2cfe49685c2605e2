"""Run a command in its own process group with a deadline: a hang (a distributed teardown that
never returns, a rank waiting on a collective) fails the test with a message in seconds or
minutes instead of stalling the suite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest


def run_with_deadline(argv, *, timeout, what, env=None, cwd=None):
    """`subprocess.run(argv, capture_output=True, text=True)` that, past `timeout` seconds,
    kills the whole process group (torchrun's workers too) and fails the test naming `what`
    and the tail of its stderr."""
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        pytest.fail(f"{what} hung: no exit within {timeout} s (killed); stderr ends:\n{tail}")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def python(*code_and_args):
    """The argv that runs a Python snippet with this interpreter."""
    return [sys.executable, "-c", *code_and_args]
