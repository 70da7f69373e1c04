"""Atomic file output: what the package writes appears whole or not at all.

ARCHITECTURE principle 6: outputs are written to a temporary name beside the target and
renamed, so a crash, a full disk or a cancelled job never leaves a half-written file where
the user expects a result (and never truncates an earlier good one).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.png``, ...) because
    some writers choose the format from them. On an exception the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes),
                                         dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
