"""Atomic file output: what the package writes appears whole or not at all.

ARCHITECTURE principle 6: outputs are written to a temporary name beside the target and
renamed, so a crash, a full disk or a cancelled job never leaves a half-written file where
the user expects a result (and never truncates an earlier good one). This module is the one
writer for that: :func:`atomic_path` (one file, any writer that takes a path),
:func:`write_bytes_atomically`, :func:`write_text_atomically` and :func:`atomic_files`
(several files of one folder, e.g. a model's weights and card, renamed together at the end).
Each removes only the temporaries it made itself; other files in the folder are never
touched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

# The process's umask, read once: os.umask can only be read by setting it, which is not
# thread-safe later on (jobs write from worker threads).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _temporary_beside(path: Path) -> Path:
    """A new, empty file in ``path``'s folder whose name keeps ``path``'s suffixes.

    Some writers (nibabel, matplotlib) choose the format from the suffixes; the leading dot
    hides the file from folder listings and from the package's own folder expansion.
    """
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes),
                                         dir=path.parent)
    try:
        # mkstemp makes the file private (0600); the result should get the mode any new file
        # gets here (0666 less the umask), or keep the mode of the file it replaces.
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
        os.fchmod(handle, mode)
    finally:
        os.close(handle)
    return Path(temporary)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.png``, ...) because
    some writers choose the format from them. On an exception the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    temporary = _temporary_beside(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike, names: Sequence[str]) -> Iterator[dict[str, Path]]:
    """Yield temporary paths for several files of ``folder``; on success rename them all.

    Parameters
    ----------
    folder : str or PathLike
        Created if missing.
    names : sequence of str
        File names inside ``folder``. They are renamed into place in this order once the
        block ends without an exception, so put the file that marks the set as complete
        (a model's card) last.

    Yields
    ------
    dict of str to Path
        The temporary path to write for each name.

    Notes
    -----
    On an exception every temporary made here is removed and the existing files are left
    as they were; files in ``folder`` that this call did not make (a user's ``notes.tmp``)
    are never touched.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporaries: dict[str, Path] = {}
    try:
        for name in names:
            temporaries[name] = _temporary_beside(folder / name)
        yield dict(temporaries)
        for name, temporary in temporaries.items():
            os.replace(temporary, folder / name)
    finally:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path


def write_text_atomically(path: str | os.PathLike, dump: Callable[[IO[str]], object] | str
                          ) -> Path:
    """Write a UTF-8 text file through a temporary file and a rename; returns ``path``.

    Parameters
    ----------
    path : str or PathLike
        The file to write.
    dump : str or callable
        The text itself, or a function that writes it to the open file object it is given
        (``lambda f: json.dump(record, f)``; ``csv.writer(f)``). Newlines are written as
        given (``newline=""``), which the csv module needs.
    """
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "w", newline="",
                                              encoding="utf-8") as handle:
        if isinstance(dump, str):
            handle.write(dump)
        else:
            dump(handle)
    return path
