"""Reading NumPy `.npy` and `.npz` files without trusting them.

`allow_pickle=False` always (nothing is ever unpickled), and every header is checked against
the bytes present before an array is allocated: a truncated file, a header announcing more data
than the file (or archive member) holds, a member that is not `.npy` or one that inflates like
a zip bomb is a [`DataError`][hmfusion.data.DataError], never a `MemoryError` or a traceback.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from hmfusion.data.dataset import DataError

__all__ = ["load_npy", "load_npz"]

#: An .npz member that inflates more than this many times (and past 64 MiB) is a zip bomb.
_MAX_INFLATION = 1000


def _read_npy_header(stream: IO[bytes], where: str) -> tuple[int, np.dtype]:
    """(data bytes, dtype) that an .npy header announces; refuses object arrays."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:  # 2.0 and 3.0 share the layout (3.0 only allows UTF-8 field names)
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, EOFError) as failure:
        raise DataError(f"{where} is not a NumPy .npy array ({failure})") from None
    if dtype.hasobject:
        raise DataError(
            f"{where} holds Python objects; hmfusion never unpickles data, so save "
            "plain numbers (or strings, for labels)"
        )
    return math.prod(shape) * dtype.itemsize, dtype


def load_npy(path: Path) -> np.ndarray:
    """The array of an `.npy` file, its header checked against the file's size first.

    Raises:
        DataError: not an .npy file, Python objects, or truncated/corrupt.
    """
    with open(path, "rb") as handle:
        try:
            np.lib.format.read_magic(handle)
        except ValueError:
            raise DataError(f"{path} is not a NumPy .npy file") from None
        handle.seek(0)
        claimed, _ = _read_npy_header(handle, str(path))
        present = path.stat().st_size - handle.tell()
        if claimed > present:
            raise DataError(
                f"{path} is truncated or corrupt: its header announces {claimed:,} "
                f"bytes of data and the file holds {present:,}"
            )
        handle.seek(0)
        try:
            return np.lib.format.read_array(handle, allow_pickle=False)
        except (ValueError, EOFError) as failure:
            raise DataError(f"{path} is truncated or corrupt: {failure}") from None


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, each member's header checked before it is read."""
    arrays: dict[str, np.ndarray] = {}
    # opened here, so that an unreadable file is an OSError ("Permission denied"), which
    # is_zipfile would have answered as "not a zip file"
    with open(path, "rb") as handle:
        if not zipfile.is_zipfile(handle):
            raise DataError(f"{path} is not a NumPy .npz (zip) file")
        handle.seek(0)
        _read_npz_members(path, handle, arrays)
    if not arrays:
        raise DataError(f"{path} holds no arrays")
    return arrays


def _read_npz_members(path: Path, handle: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    try:
        with zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                key = _npz_key(path, info)
                arrays[key] = _read_npz_member(path, archive, info)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as failure:
        if isinstance(failure, DataError):
            raise
        raise DataError(f"{path} is truncated or corrupt: {failure}") from None


def _npz_key(path: Path, info: zipfile.ZipInfo) -> str:
    if not info.filename.endswith(".npy"):
        raise DataError(
            f"{path}: member {info.filename!r} is not a .npy array (an .npz holds only .npy arrays)"
        )
    return info.filename[: -len(".npy")]


def _read_npz_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    where = f"{path}[{info.filename[:-4]!r}]"
    if info.file_size > (64 << 20) and info.file_size > _MAX_INFLATION * max(info.compress_size, 1):
        raise DataError(
            f"{where} inflates from {info.compress_size:,} to {info.file_size:,} "
            "bytes; refusing what looks like a zip bomb"
        )
    with archive.open(info) as member:
        claimed, _ = _read_npy_header(member, where)
        present = info.file_size - member.tell()
    if claimed > present:
        raise DataError(
            f"{where} is truncated or corrupt: its header announces {claimed:,} "
            f"bytes of data and the member holds {present:,}"
        )
    with archive.open(info) as member:
        try:
            return np.lib.format.read_array(member, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as failure:
            raise DataError(f"{where} is truncated or corrupt: {failure}") from None
