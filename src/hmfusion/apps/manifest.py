"""The manifest of an output directory: what a command wrote there, entry by entry.

Every output directory ([`OutputDirectory`][hmfusion.apps.outputs.OutputDirectory]) holds
`.hmfusion-manifest.json`, written with it: each folder, and each regular file with its size and
SHA-256. `--overwrite` replaces a directory only when every entry it holds is one its manifest
lists, unchanged ([`why_not_ours`][hmfusion.apps.manifest.why_not_ours]): a file added or edited
by hand, a symbolic link (never followed) or a missing manifest make it refuse, so it can never
delete what hmfusion did not write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hmfusion.ops.files import sha256_file

__all__ = ["MANIFEST", "entries", "why_not_ours"]

#: The file in every output directory that lists what the command wrote there.
MANIFEST = ".hmfusion-manifest.json"


def entries(root: Path) -> dict[str, dict[str, Any]]:
    """Every entry under `root` (not following symbolic links), by relative path: a folder as
    `{"type": "directory"}`, a regular file with its size and SHA-256, anything else (a link,
    a socket, …) as `{"type": "other"}`. The manifest itself is left out.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "a.txt").write_text("a")
        ...     entries(Path(folder))["a.txt"]["size"]
        1
    """
    found: dict[str, dict[str, Any]] = {}
    pending = [root]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as listing:
            for entry in listing:
                name = Path(entry.path).relative_to(root).as_posix()
                if name == MANIFEST:
                    continue
                if entry.is_symlink():
                    found[name] = {"type": "other"}
                elif entry.is_dir(follow_symlinks=False):
                    found[name] = {"type": "directory"}
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    size = entry.stat(follow_symlinks=False).st_size
                    digest = sha256_file(entry.path)
                    found[name] = {"type": "file", "size": size, "sha256": digest}
                else:
                    found[name] = {"type": "other"}
    return found


def why_not_ours(path: Path) -> str | None:
    """Why `--overwrite` may not replace the directory `path`, as a clause of the error
    message; None when every entry is one its manifest lists, unchanged.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     why_not_ours(Path(folder))[:47]
        'it holds no .hmfusion-manifest.json, so it is n'
    """
    manifest = path / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        return f"it holds no {MANIFEST}, so it is not an output of hmfusion (or is an older one)"
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["entries"]
        if not isinstance(listed, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is not readable"
    for name, entry in sorted(entries(path).items()):
        if entry["type"] == "other":
            return f"{name!r} is a symbolic link or special file, which hmfusion never writes"
        if listed.get(name) != entry:
            return f"{name!r} is not what hmfusion wrote there (added or changed since)"
    return None
