"""What an iterator fetches and what its batches hold: :class:`Serving`.

A dataset in the compact form (issue 26) holds ``pixels``, ``slope``, ``intercept``
and ``labels`` and derives ``image`` and one bool variable per kind from them. The
iterator always fetches what the dataset holds, the fewer bytes (from a store, or
across a cluster's wire), and hands out either the compact arrays as they are
(``compact=True``) or today's float32 ``image`` and bool masks, widened and unpacked
here, in the batch thread (``compact=False``): the same values, bit for bit, as the
derived variables (:mod:`daskmri.compact`). A dataset without the compact variables
is served as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..compact import bit, widen
from ..schema import kinds_of

__all__ = ["COMPACT", "Serving", "holds_compact", "kinds_in", "take_rows"]

#: The variables a dataset in the compact form holds.
COMPACT = ("pixels", "slope", "intercept", "labels")
#: What widening ``image`` needs.
IMAGE_FROM = ("pixels", "slope", "intercept")


def holds_compact(ds) -> bool:
    """Whether ``ds`` holds the compact variables.

    They are ``pixels``, ``slope``, ``intercept`` and ``labels``.

    Parameters
    ----------
    ds : xarray.Dataset
        Any dataset.

    Returns
    -------
    bool
        True when it has all four as data variables.

    Examples
    --------
    >>> import xarray as xr
    >>> holds_compact(xr.Dataset({"image": ("record", np.zeros(2))}))
    False
    """
    return all(name in ds.data_vars for name in COMPACT)


def kinds_in(ds) -> tuple[str, ...]:
    """The kinds of ``ds`` in the order of the bits of ``labels``.

    They are ``ds.attrs["kinds"]``, else (a dataset not made by daskmri) its mask
    variables in order.

    Parameters
    ----------
    ds : xarray.Dataset
        Any dataset.

    Returns
    -------
    tuple of str
        The kinds, bit 0 first.

    Examples
    --------
    >>> import xarray as xr
    >>> kinds_in(xr.Dataset(attrs={"kinds": '["icontour", "ocontour"]'}))
    ('icontour', 'ocontour')
    """
    if "kinds" in ds.attrs:
        return tuple(json.loads(ds.attrs["kinds"]))
    return kinds_of(ds)


@dataclass(frozen=True)
class Serving:
    """What an iterator fetches, and what its batches hold.

    ``served``: the variables of a batch; ``fetched``: those loaded for them; ``kinds``:
    the bit order of ``labels``; ``compact``: batches hold the compact arrays.

    When ``widens``, ``image`` and the masks in ``served`` are made in the batch
    thread from the fetched compact arrays by :meth:`gather`; otherwise batches are
    served as fetched.

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset({n: ("record", np.zeros(2)) for n in (*COMPACT, "image", "i")},
    ...                 attrs={"kinds": '["i"]'})
    >>> Serving.resolve(ds, ("image", "i"), compact=False).fetched
    ('pixels', 'slope', 'intercept', 'labels')
    >>> Serving.resolve(ds, None, compact=True).served
    ('pixels', 'slope', 'intercept', 'labels')
    """

    served: tuple[str, ...]
    fetched: tuple[str, ...]
    kinds: tuple[str, ...]
    compact: bool = False

    @classmethod
    def resolve(cls, ds, variables: Sequence[str] | None, *, compact: bool) -> Serving:
        """What to fetch and serve from ``ds`` for ``variables`` (None: the default).

        Parameters
        ----------
        ds : xarray.Dataset
            The dataset.
        variables : sequence of str, optional
            The variables asked for; by default the compact four (``compact``) or
            ``image`` and every mask.
        compact : bool
            Hand out the compact arrays, as the dataset holds them.

        Returns
        -------
        Serving
            The resolved variables.

        Raises
        ------
        ValueError
            If ``compact`` and ``ds`` does not hold the compact variables.
        """
        holds, kinds = holds_compact(ds), kinds_in(ds)
        if compact and not holds:
            raise ValueError(
                f"this dataset has no compact variables ({', '.join(COMPACT)}) for "
                "BatchIterator(compact=True): load it with daskmri >= 0.3 (load_dataset or "
                "open_dataset, which hold them) or use compact=False"
            )
        if compact:
            served = tuple(COMPACT if variables is None else variables)
            return cls(served, served, kinds, compact=True)
        served = tuple(("image", *kinds_of(ds)) if variables is None else variables)
        if not holds:
            return cls(served, served, kinds)
        fetched: list[str] = []
        for name in served:
            sources = IMAGE_FROM if name == "image" else ("labels",) if name in kinds else (name,)
            fetched.extend(s for s in sources if s not in fetched)
        return cls(served, tuple(fetched), kinds)

    @property
    def widens(self) -> bool:
        """Whether batches are widened from compact arrays here."""
        return self.fetched != self.served and not self.compact

    def gather(
        self,
        loaded: dict[int, dict],
        chunks: np.ndarray,
        rows: np.ndarray,
        empty: Callable = np.empty,
    ) -> dict[str, np.ndarray]:
        """A widened batch, gathered from the loaded compact chunks in one pass.

        Row ``rows[j]`` of chunk ``chunks[j]`` for each j: its ``image`` widened and its
        masks unpacked straight into the batch's arrays, with no gathered compact copy
        in between (an epoch from memory is bounded by the bytes its batch thread
        moves).

        Parameters
        ----------
        loaded : dict
            ``{chunk: {name: array}}``: the fetched variables and the coordinates.
        chunks, rows : numpy.ndarray
            Each record's chunk and row in it.
        empty : callable
            ``empty(shape, dtype)``: where the batch's arrays come from.

        Returns
        -------
        dict
            The served variables in order, then the coordinates; fresh arrays.

        Examples
        --------
        >>> import xarray as xr
        >>> ds = xr.Dataset({n: ("record", np.zeros(2)) for n in (*COMPACT, "image", "i")},
        ...                 attrs={"kinds": '["i"]'})
        >>> serving = Serving.resolve(ds, ("image", "i"), compact=False)
        >>> chunk = {"pixels": np.array([[[2]], [[4]]], np.int16), "slope": np.array([0.5, 1]),
        ...          "intercept": np.array([1.0, 0]), "labels": np.array([[[1]], [[0]]], np.uint8),
        ...          "instance": np.array([7, 8])}
        >>> serving.gather({0: chunk}, np.array([0, 0]), np.array([1, 0]))
        {'image': array([[[4.]],
        <BLANKLINE>
               [[2.]]], dtype=float32), 'i': array([[[False]],
        <BLANKLINE>
               [[ True]]]), 'instance': array([8, 7])}
        """
        first = loaded[int(chunks[0])] if len(chunks) else next(iter(loaded.values()))
        out = {name: self._empty(name, first, len(rows), empty) for name in self.served}
        out.update(
            (name, empty((len(rows), *values.shape[1:]), values.dtype))
            for name, values in first.items()
            if name not in self.fetched
        )
        picked = [(loaded[c], r) for c, r in zip(chunks.tolist(), rows.tolist(), strict=True)]
        if "image" in out:
            _widen_rows(picked, out["image"])
        for name in self.served:
            if name in self.kinds:
                _bit_rows(picked, self.kinds.index(name), out[name])
        rest = [name for name in out if name != "image" and name not in self.kinds]
        take_rows(loaded, chunks, rows, {name: out[name] for name in rest})
        return out

    def _empty(self, name: str, first: dict, n: int, empty: Callable) -> np.ndarray:
        """The batch's array for served variable ``name``, of ``n`` records."""
        source = "pixels" if name == "image" else "labels" if name in self.kinds else name
        dtype = np.float32 if name == "image" else bool if name in self.kinds else None
        values = first[source]
        return empty((n, *values.shape[1:]), dtype or values.dtype)


def _widen_rows(picked: list[tuple[dict, int]], out: np.ndarray) -> None:
    """Widen row ``r`` of each picked chunk's pixels into ``out[j]``. Record by
    record, each a plain cast where the whole batch has slope 1 and intercept 0 (the
    common case, decided once): per-record calls of :func:`widen` cost a batch more
    in Python than in the cast itself."""
    slope = np.array([chunk["slope"][r] for chunk, r in picked], np.float64)
    intercept = np.array([chunk["intercept"][r] for chunk, r in picked], np.float64)
    dtype = picked[0][0]["pixels"].dtype if picked else np.dtype(np.float32)
    if (dtype.itemsize <= 4 or dtype.kind == "f") and (slope == 1).all() and (intercept == 0).all():
        for j, (chunk, r) in enumerate(picked):
            np.copyto(out[j], chunk["pixels"][r], casting="unsafe")  # astype's cast
        return
    for j, (chunk, r) in enumerate(picked):
        widen(chunk["pixels"][r], slope[j], intercept[j], out=out[j])


def _bit_rows(picked: list[tuple[dict, int]], k: int, out: np.ndarray) -> None:
    """Bit ``k`` of row ``r`` of each picked chunk's labels into the bool ``out[j]``."""
    if not picked or picked[0][0]["labels"].dtype.itemsize > 1:
        for j, (chunk, r) in enumerate(picked):
            bit(chunk["labels"][r], k, out=out[j])
        return
    # One-byte labels: 0 or 1 in a byte is a valid bool, so the bit is shifted and
    # masked in place in the bool array's bytes (:func:`daskmri.compact.bit`, inlined).
    view, one, shift = out.view(np.uint8), np.uint8(1), np.uint8(k)
    for j, (chunk, r) in enumerate(picked):
        labels = chunk["labels"][r]
        if k:
            np.right_shift(labels, shift, out=view[j])
            np.bitwise_and(view[j], one, out=view[j])
        else:
            np.bitwise_and(labels, one, out=view[j])


def take_rows(
    loaded: dict[int, dict], chunks: np.ndarray, rows: np.ndarray, out: dict[str, np.ndarray]
) -> None:
    """``out[name][j] = loaded[chunks[j]][name][rows[j]]`` for every j and name.

    Records' values of one row each (a rescale, a coordinate) are taken a chunk at a
    time, with one fancy index per chunk and name; larger ones (an image) record by
    record, straight into place: a fancy index would copy them twice.

    Examples
    --------
    >>> loaded = {0: {"v": np.array([1, 2])}, 1: {"v": np.array([3, 4])}}
    >>> out = {"v": np.zeros(3, int)}
    >>> take_rows(loaded, np.array([1, 0, 1]), np.array([1, 0, 0]), out)
    >>> out["v"]
    array([4, 1, 3])
    """
    small = [name for name, values in out.items() if values.ndim == 1]
    large = [name for name in out if name not in small]
    if small:
        for c in np.unique(chunks).tolist():
            at = np.flatnonzero(chunks == c)
            picked, chunk = rows[at], loaded[c]
            for name in small:
                out[name][at] = chunk[name][picked]
    for j, (c, r) in enumerate(zip(chunks.tolist(), rows.tolist(), strict=True)):
        chunk = loaded[c]
        for name in large:
            out[name][j] = chunk[name][r]
