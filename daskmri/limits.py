"""Explicit bounds on what one input file may make daskmri read or allocate."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RecordError, redact
from .filesystem import LOCAL, FileSystem, TooLarge

__all__ = ["DEFAULT_LIMITS", "Limits", "read_bounded"]


@dataclass(frozen=True)
class Limits:
    """Upper bounds on file sizes, pixels and contour points, checked before any read.

    Upper bounds checked *before* reading or allocating, so that a file's own
    header can never make a worker allocate more than these.

    Parameters
    ----------
    max_file_bytes : int
        Largest DICOM or contour file read, in bytes. Default 256 MiB.
    max_pixels : int
        Largest declared ``Rows * Columns`` of one image. Default 4096 * 4096.
    max_contour_points : int
        Most points in one contour file. Default 100_000.
    max_voxels : int
        Most voxels a NIfTI header may declare, frames included (checked before any
        voxel is read or allocated). Default 2**28 (1 GiB as float32).

    Examples
    --------
    >>> from daskmri import Limits
    >>> Limits(max_pixels=512 * 512).max_pixels
    262144
    """

    max_file_bytes: int = 256 * 2**20
    max_pixels: int = 4096 * 4096
    max_contour_points: int = 100_000
    max_voxels: int = 2**28

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_pixels", "max_contour_points", "max_voxels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = Limits()


def read_bounded(
    path: str,
    limits: Limits,
    *,
    error: type[RecordError],
    name: str,
    expected: str,
    fs: FileSystem = LOCAL,
) -> bytes:
    """The bytes of ``path`` on ``fs``, refused (``error``) before reading when the
    file is larger than ``limits.max_file_bytes``, or missing, a directory or
    unreadable. ``name`` is what the messages call the file (``"DICOM file"``),
    ``expected`` what a directory was expected to be (``"a DICOM file"``).

    Examples
    --------
    >>> read_bounded("/no/such", DEFAULT_LIMITS, error=RecordError, name="file", expected="a file")
    Traceback (most recent call last):
    ...
    daskmri.errors.RecordError: /no/such: file does not exist
    """
    try:
        return fs.read(path, limits.max_file_bytes)
    except TooLarge as exc:
        size = "" if exc.size is None else f"{exc.size} bytes, "
        raise error(
            path, f"{name} is {size}over Limits.max_file_bytes={limits.max_file_bytes}"
        ) from None
    except IsADirectoryError:
        raise error(path, f"is a directory, expected {expected}") from None
    except FileNotFoundError:
        raise error(path, f"{name} does not exist") from None
    except OSError as exc:
        reason = redact(str(exc.strerror or exc), dict(fs.options))
        raise error(path, f"cannot read {name}: {reason}") from exc
