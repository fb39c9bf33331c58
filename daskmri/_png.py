"""A minimal PNG writer (RGB, 8 bits, no filter), so that the demo writes its picture
and the QC report's workers encode their thumbnails with numpy and zlib alone.
Public through :mod:`daskmri.plot`."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

__all__ = ["SOFTWARE_TEXT", "png_bytes", "write_png", "written_by_daskmri"]


#: The PNG text chunk that marks a picture as daskmri's own (so that the demo
#: overwrites only a picture it wrote itself).
SOFTWARE_TEXT = b"Software\x00daskmri"


def written_by_daskmri(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a PNG file that :func:`write_png` wrote.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.png"
    >>> write_png(p, np.zeros((2, 3, 3), np.uint8))
    >>> written_by_daskmri(p), written_by_daskmri(p.parent / "absent.png")
    (True, False)
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return False
    return head.startswith(b"\x89PNG\r\n\x1a\n") and SOFTWARE_TEXT in head


def png_bytes(rgb: np.ndarray, *, level: int = 6) -> bytes:
    """The PNG file of a ``(rows, columns, 3)`` uint8 array, as bytes.

    Parameters
    ----------
    rgb : numpy.ndarray
        The picture, ``(rows, columns, 3)``, converted to uint8.
    level : int
        The zlib compression level, 0 to 9.

    Returns
    -------
    bytes
        A PNG file: 8-bit RGB, every scanline unfiltered (filter type 0), one IDAT
        chunk, and the text chunk :data:`SOFTWARE_TEXT`.

    Raises
    ------
    ValueError
        If ``rgb`` is not ``(rows, columns, 3)`` with at least one pixel.

    Examples
    --------
    >>> data = png_bytes(np.zeros((2, 3, 3), np.uint8))
    >>> data[:8], len(data) < 100
    (b'\\x89PNG\\r\\n\\x1a\\n', True)
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or not rgb.size:
        raise ValueError(f"expected (rows, columns, 3) uint8, got shape {rgb.shape}")
    height, width, _ = rgb.shape
    # Each scanline starts with filter type 0 (none).
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"tEXt", SOFTWARE_TEXT),
            chunk(b"IDAT", zlib.compress(raw.tobytes(), level)),
            chunk(b"IEND", b""),
        )
    )


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write a ``(rows, columns, 3)`` uint8 array as a PNG file (no dependency needed).

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.png"
    >>> write_png(p, np.zeros((2, 3, 3), np.uint8))
    >>> p.read_bytes()[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (rows, columns, 3) uint8, got shape {rgb.shape}")
    data = png_bytes(rgb)
    with open(path, "wb") as fh:
        fh.write(data)
