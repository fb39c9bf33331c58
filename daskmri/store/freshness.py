"""How a store compares with the files it was built from (:func:`check`), from the
fingerprints kept in it; no pixel is read."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ..layout import layout_from_dict
from ..plan import plan_inputs
from ..settings import Source
from .format import RETIRED
from .spec import StoreSpec
from .state import read_state

__all__ = ["Freshness", "check"]


@dataclass(frozen=True)
class Freshness:
    """How a store compares with the files it was built from.

    ``changed``, ``added`` and ``removed`` list ``(patient_id, instance)`` keys;
    ``other`` is true when something outside the records changed (the link file,
    a file the scan reported as a problem, the layout).
    """

    store: str
    root: str
    complete: bool
    changed: tuple[tuple[str, int], ...] = ()
    added: tuple[tuple[str, int], ...] = ()
    removed: tuple[tuple[str, int], ...] = ()
    other: bool = False

    @property
    def fresh(self) -> bool:
        return self.complete and not (self.changed or self.added or self.removed or self.other)

    def __str__(self) -> str:
        if self.fresh:
            return f"{self.store} is up to date with {self.root}"
        parts = []
        if not self.complete:
            parts.append("its build never finished")
        for label, keys in (
            ("changed", self.changed),
            ("added", self.added),
            ("removed", self.removed),
        ):
            if keys:
                shown = ", ".join(f"{p}/{i}" for p, i in keys[:5])
                more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} record(s) {label} ({shown}{more})")
        if self.other:
            parts.append("the link file, the layout or a file outside the records changed")
        return (
            f"{self.store} is stale against {self.root}: {'; '.join(parts)}. "
            "Bring it up to date with daskmri.build(..., mode='update') "
            "(or `daskmri build ROOT --out STORE --mode update`), "
            "which re-parses only those records"
        )


def check(
    store: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    storage_options: dict | None = None,
    source_options: dict | None = None,
) -> Freshness:
    """Compare a store with its dataset folder (by default the folder it was built from).

    The folder is scanned again with the store's layout and labels, and every
    file's size and modification time (on an object store: size and ETag) is
    compared with the fingerprints kept in the store. No pixel is read.
    ``storage_options`` are the store's fsspec options, ``source_options`` the
    dataset folder's, when either is at a URL.

    Returns
    -------
    Freshness
        ``fresh`` is true when nothing changed and the build finished; ``str()``
        of it says what changed and how to fix it.

    Examples
    --------
    >>> import tempfile, daskmri
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=4, shape=(16, 16))
    >>> store = tempfile.mkdtemp() + "/ds.zarr"
    >>> _ = daskmri.build(root, store, scheduler="sync")
    >>> daskmri.check(store).fresh
    True
    >>> (root / "dicoms" / "SYN0001" / "2.dcm").touch()
    >>> daskmri.check(store).changed
    (('SYN0001', 2),)
    """
    spec = StoreSpec.of(store, storage_options)
    state = read_state(spec, markers=False, names=True)
    attrs = state.attrs
    root = attrs["source"] if root is None else os.fspath(root)
    layout = layout_from_dict(json.loads(attrs["layout"]))
    source = Source.of(root, layout, attrs["labels"], source_options)
    inputs = plan_inputs(source, names=True)
    current = (state.status != RETIRED) & (state.fingerprint != 0)
    same = np.isin(inputs.fingerprints, state.fingerprint[current])
    known = np.isin(inputs.keys, state.key[current])
    names = inputs.names or ()
    changed = tuple(names[i] for i in np.flatnonzero(~same & known))
    added = tuple(names[i] for i in np.flatnonzero(~known))
    gone = np.flatnonzero(current & ~np.isin(state.key, inputs.keys))
    removed = tuple((str(state.patient_id[k]), int(state.instance[k])) for k in gone)
    return Freshness(
        store=spec.shown,
        root=source.root,
        complete=bool(attrs.get("complete")),
        changed=changed,
        added=added,
        removed=removed,
        other=inputs.fingerprint != attrs.get("input_fingerprint")
        and not (changed or added or removed),
    )
