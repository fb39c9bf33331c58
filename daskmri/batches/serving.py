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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..compact import unpack_labels, widen
from ..schema import kinds_of

__all__ = ["COMPACT", "Serving", "holds_compact", "kinds_in"]

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
    thread from the fetched compact arrays by :meth:`finish`; otherwise batches are
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

    def finish(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch to hand out, from the fetched one.

        ``image`` is widened and the masks unpacked when :attr:`widens`; the rest (the
        coordinates) stay as they are.

        Parameters
        ----------
        batch : dict
            The fetched variables and the coordinates, first axis the batch.

        Returns
        -------
        dict
            The served variables in order, then the coordinates.

        Examples
        --------
        >>> import xarray as xr
        >>> ds = xr.Dataset({n: ("record", np.zeros(2)) for n in (*COMPACT, "image", "i")},
        ...                 attrs={"kinds": '["i"]'})
        >>> serving = Serving.resolve(ds, ("image", "i"), compact=False)
        >>> batch = {"pixels": np.array([[[2]]], np.int16), "slope": np.array([0.5]),
        ...          "intercept": np.array([1.0]), "labels": np.array([[[1]]], np.uint8),
        ...          "instance": np.array([7])}
        >>> serving.finish(batch)
        {'image': array([[[2.]]], dtype=float32), 'i': array([[[ True]]]), 'instance': array([7])}
        """
        if not self.widens:
            return batch
        wanted = [name for name in self.served if name in self.kinds]
        masks = unpack_labels(batch["labels"], self.kinds) if wanted else {}
        out = {}
        for name in self.served:
            if name == "image":
                out[name] = widen(batch["pixels"], batch["slope"], batch["intercept"])
            else:
                out[name] = masks[name] if name in masks else batch[name]
        out.update((name, value) for name, value in batch.items() if name not in self.fetched)
        return out
