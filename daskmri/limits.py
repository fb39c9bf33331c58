"""Explicit bounds on what one input file may make daskmri read or allocate."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """Upper bounds checked *before* reading or allocating, so that a file's own
    header can never make a worker allocate more than these.

    Parameters
    ----------
    max_file_bytes : int
        Largest DICOM or contour file read, in bytes. Default 256 MiB.
    max_pixels : int
        Largest declared ``Rows * Columns`` of one image. Default 4096 * 4096.
    max_contour_points : int
        Most points in one contour file. Default 100_000.

    Examples
    --------
    >>> from daskmri import Limits
    >>> Limits(max_pixels=512 * 512).max_pixels
    262144
    """

    max_file_bytes: int = 256 * 2**20
    max_pixels: int = 4096 * 4096
    max_contour_points: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_pixels", "max_contour_points"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = Limits()
