"""Files only their owner may read (secrets, keys), written atomically.

:func:`write_private` writes a temporary file in the target's directory, mode
0600 from its creation, syncs it and renames it over the target: a reader (or a
crash) sees the old file or the new one, never a part, and nobody else can open
it in between.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["write_private"]


def write_private(
    path: Path,
    data: bytes | str,
    *,
    mode: int = 0o600,
    owner: str | int | None = None,
    group: str | int | None = None,
    dir_mode: int = 0o777,
) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8), with ``mode`` (0600 unless told).

    ``owner`` and ``group`` give the file away before it is renamed into place (a broker's
    password file); ``dir_mode`` is the mode of the directories made on the way (0700 for an
    identity's folder), masked by the umask as usual.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        if owner is not None or group is not None:
            shutil.chown(tmp, owner, group)  # type: ignore[arg-type]
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
