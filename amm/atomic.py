"""The one way amm writes a file that someone may read meanwhile: all of it, or none of it.

``atomic_write(path, data)`` writes a temporary file in ``path``'s directory (a unique name, so
two processes writing the same file never share one), flushes it to disk (fsync), renames it
over ``path`` (atomic on POSIX file systems) and fsyncs the directory, so the rename survives a
crash too. A reader sees the old file or the new one, never a part; a failure leaves ``path``
as it was and removes the temporary file. Used for ``summary.json``, ``meta.json``,
``fingerprint.json``, ``metrics.jsonl`` rewrites, checkpoints, the f* cache and downloads.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# the bytes, or a function that writes them into the open (binary) temporary file
Content = bytes | str | Callable[[IO[bytes]], None]


def atomic_write(
    path: Path, data: Content, *, before_replace: Callable[[], None] | None = None
) -> None:
    """Replace ``path`` by ``data`` atomically (see the module docstring).

    ``before_replace`` runs once the new content is on disk, before the rename: the checkpoint
    keeps the old file as ``previous.pt`` there, so both files exist at every instant.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never someone else's file; 0o666 less the umask, as open() would create it
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, **dumps: Any) -> None:
    """``atomic_write`` of ``json.dumps(obj, **dumps)``."""
    atomic_write(path, json.dumps(obj, **dumps))


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
