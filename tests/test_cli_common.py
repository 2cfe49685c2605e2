"""hmfusion.apps.common: the one error path and the device."""

from __future__ import annotations

import argparse
import errno

import pytest
import torch

from hmfusion.apps.common import (
    EXIT_INTERRUPTED,
    UsageError,
    error,
    positive_int,
    resolve_device,
    run_command,
)


def one_line(err: str) -> str:
    err = err.strip()
    assert err.startswith("hmfusion: error: ") and "\n" not in err, err
    return err


def test_error_prints_one_line_even_for_a_multiline_message(capsys):
    assert error("first\nsecond") == 2
    assert one_line(capsys.readouterr().err) == "hmfusion: error: first second"


@pytest.mark.parametrize(
    "failure, status, text",
    [
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted; no output was written"),
        (UsageError("--x is bad"), 2, "--x is bad"),
        (
            OSError(errno.ENOSPC, "No space left on device", "out/hm.pt"),
            2,
            "'out/hm.pt': No space left on device",
        ),
    ],
)
def test_run_command_ends_failures_in_one_line(failure, status, text, capsys):
    def main(args):
        raise failure

    assert run_command(main, argparse.Namespace()) == status
    assert one_line(capsys.readouterr().err) == f"hmfusion: error: {text}"


def test_run_command_lets_programming_errors_through():
    def main(args):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_command(main, argparse.Namespace())


@pytest.mark.parametrize("text", ["0", "-3", "x", "1.5"])
def test_positive_int_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(text)


@pytest.mark.parametrize(
    "name, message",
    [
        ("tpu", "--device 'tpu' is not a device"),
        ("meta", "--device 'meta': only cpu and cuda are supported"),
        ("mps", "--device 'mps': only cpu and cuda are supported"),
        ("", "--device '' is not a device"),
    ],
)
def test_resolve_device_refuses(name, message):
    with pytest.raises(UsageError, match=message):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_cuda():
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
