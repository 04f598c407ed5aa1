"""Faults of the filesystem and of stored chunks as one line instead of a traceback.

A read-only mount, a full disk, a missing permission or a truncated compressed chunk reach the
user through zarr, xarray, numcodecs or a Dask worker, each wrapping the original error its own
way. :func:`one_line` follows the exception chain to the cause and words it as an
:class:`~popsdask.core.validation.InputError` naming the path; the command line applies it once,
around every command.
"""

from __future__ import annotations

import errno
import re

from ..core.validation import InputError

__all__ = ["one_line"]

#: filesystem errors that are the user's environment, not a popsdask bug
_ERRNOS = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
#: what numcodecs' and zarr's codecs raise on a truncated or corrupted chunk
_UNDECODABLE = re.compile(r"(zstd|blosc|gzip|lz4|zlib|bz2|lzma|crc32c?)\b.*(error|mismatch)|decompression", re.I)


def one_line(err: BaseException) -> InputError | None:
    """The one-line :class:`InputError` for ``err`` when it, or an exception in its chain, is a
    filesystem fault (:data:`_ERRNOS`) or an undecodable chunk; None otherwise."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, InputError):
            return e
        if isinstance(e, OSError) and e.errno in _ERRNOS:
            where = e.filename or "output"
            return InputError(f"{where}: {_ERRNOS[e.errno]}")
        if isinstance(e, (RuntimeError, ValueError)) and _UNDECODABLE.search(str(e)):
            reason = " ".join(str(e).split())
            return InputError(f"a stored chunk cannot be decoded (truncated or corrupted; rewrite the store): {reason}")
        e = e.__cause__ or e.__context__
    return None
