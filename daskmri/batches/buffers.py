"""The arrays batches are made in: :class:`Recycler`, which hands out an array that
an earlier batch held once nothing but the recycler refers to it any more.

A batch is a few megabytes of fresh arrays. Fresh memory of that size comes from
the kernel page by page, zeroed on first touch, and the allocator gives it back when
the batch is freed; measured here, that cost a 32-record batch of 256 x 256 records
about as much as filling it (``benchmarks/compact.py``, the epochs from memory).
An array no one holds any more can take the next batch's values instead: its pages
are already there.

Whether anyone holds an array is its reference count: every view of it (a slice,
``np.asarray``, a memoryview, ``torch.from_numpy``, a transform's output that shares
its memory) holds a reference to it, so an array the training loop still uses, in
any form, is never handed out again. A build of Python without the GIL (where
reference counts are not exact) gets fresh arrays only.
"""

from __future__ import annotations

import sys
import threading
from collections import deque

import numpy as np

__all__ = ["Recycler"]

#: Arrays smaller than this are allocated fresh: the allocator keeps and reuses small
#: blocks itself.
MIN_BYTES = 1 << 20

#: References to a free array while :meth:`Recycler.empty` looks at it: the pool's,
#: the name ``candidate``, and ``sys.getrefcount``'s argument.
_UNUSED = 3


def _exact_refcounts() -> bool:
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_gil_enabled is None or bool(is_gil_enabled())


class Recycler:
    """Fresh-or-reused arrays for batches.

    Parameters
    ----------
    capacity : int
        The most arrays kept for reuse; the oldest is let go beyond it.

    Examples
    --------
    >>> recycler = Recycler(capacity=4)
    >>> a = recycler.empty((2, 512, 512), np.float32)
    >>> address = a.ctypes.data
    >>> del a  # no one holds it any more: the next array of its kind is the same memory
    >>> recycler.empty((2, 512, 512), np.float32).ctypes.data == address
    True
    >>> held = recycler.empty((2, 512, 512), np.float32)
    >>> recycler.empty((2, 512, 512), np.float32) is held  # held: never handed out twice
    False
    """

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._pool: deque[np.ndarray] = deque()
        self._lock = threading.Lock()
        self._enabled = capacity > 0 and _exact_refcounts()

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype``, which no one else holds.

        Parameters
        ----------
        shape : tuple of int
            Its shape.
        dtype : numpy.dtype
            Its dtype.

        Returns
        -------
        numpy.ndarray
            A C-contiguous array; its values are whatever it held before.
        """
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in shape)
        if not self._enabled or int(np.prod(shape)) * dtype.itemsize < MIN_BYTES:
            return np.empty(shape, dtype)
        with self._lock:
            for k in range(len(self._pool)):
                candidate = self._pool[k]
                same = candidate.shape == shape and candidate.dtype == dtype
                if same and sys.getrefcount(candidate) == _UNUSED:
                    del self._pool[k]
                    self._pool.append(candidate)  # the newest again
                    return candidate
            made = np.empty(shape, dtype)
            self._pool.append(made)
            while len(self._pool) > self.capacity:
                self._pool.popleft()
            return made

    def clear(self) -> None:
        """Let go of every array kept (they are freed once their holders let go)."""
        with self._lock:
            self._pool.clear()
