"""How a store compares with the files it was built from (:func:`check`), from the
fingerprints kept in it; no pixel is read."""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass

import numpy as np

from ..layout import layout_from_dict
from ..plan import plan_inputs
from ..settings import Source
from ..verdicts import Exclusion, as_exclusion, read_verdicts
from .format import RETIRED
from .spec import StoreSpec
from .state import read_state

__all__ = ["AS_BUILT", "Freshness", "check"]


class _Default(enum.Enum):
    AS_BUILT = "as built"


#: :func:`check`'s default ``exclude``: the verdicts file the store was built with,
#: read again (None is "no exclusion").
AS_BUILT = _Default.AS_BUILT


@dataclass(frozen=True)
class Freshness:
    """How a store compares with the files it was built from.

    ``changed``, ``added`` and ``removed`` list ``(patient_id, instance)`` keys;
    ``excluded`` those the store holds that the verdicts file now excludes, and
    ``included`` those it left out that the verdicts file no longer excludes (or
    that are checked without ``exclude``); ``other`` is true when something outside
    the records changed (the link file, a file the scan reported as a problem, the
    layout).
    """

    store: str
    root: str
    complete: bool
    changed: tuple[tuple[str, int], ...] = ()
    added: tuple[tuple[str, int], ...] = ()
    removed: tuple[tuple[str, int], ...] = ()
    other: bool = False
    excluded: tuple[tuple[str, int], ...] = ()
    included: tuple[tuple[str, int], ...] = ()

    @property
    def fresh(self) -> bool:
        listed = self.changed or self.added or self.removed or self.excluded or self.included
        return self.complete and not (listed or self.other)

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
            ("newly excluded", self.excluded),
            ("no longer excluded", self.included),
        ):
            if keys:
                shown = ", ".join(f"{p}/{i}" for p, i in keys[:5])
                more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} record(s) {label} ({shown}{more})")
        if self.other:
            parts.append("the link file, the layout or a file outside the records changed")
        same = (
            " and the exclude= to apply (None for none)" if self.excluded or self.included else ""
        )
        return (
            f"{self.store} is stale against {self.root}: {'; '.join(parts)}. "
            f"Bring it up to date with daskmri.build(..., mode='update'){same} "
            "(or `daskmri build ROOT --out STORE --mode update`), "
            "which re-parses only those records"
        )


def check(
    store: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    storage_options: dict | None = None,
    source_options: dict | None = None,
    exclude=AS_BUILT,
) -> Freshness:
    """Compare a store with its dataset folder (by default the folder it was built from).

    The folder is scanned again with the store's layout and labels, and every
    file's size and modification time (on an object store: size and ETag) is
    compared with the fingerprints kept in the store. No pixel is read.
    ``storage_options`` are the store's fsspec options, ``source_options`` the
    dataset folder's, when either is at a URL.

    ``exclude`` is the verdicts file to check against (a path or a
    :class:`~daskmri.verdicts.Exclusion`; None: no exclusion). By default it is the
    one the store was built with (``build(..., exclude=)``), read again, so that a
    verdict changed since the build makes the store stale as a changed file does; a
    store built without one is checked without one.

    Returns
    -------
    Freshness
        ``fresh`` is true when nothing changed and the build finished; ``str()``
        of it says what changed and how to fix it.

    Raises
    ------
    FileNotFoundError
        If the verdicts file the store was built with is gone (and no ``exclude``
        is given); the message says what to pass.

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
    exclusion = _as_built(spec, attrs) if exclude is AS_BUILT else as_exclusion(exclude)
    source = Source.of(root, layout, attrs["labels"], source_options, exclude=exclusion)
    inputs = plan_inputs(source, names=True)
    current = (state.status != RETIRED) & (state.fingerprint != 0)
    same = np.isin(inputs.fingerprints, state.fingerprint[current])
    known = np.isin(inputs.keys, state.key[current])
    names = inputs.names or ()
    changed = tuple(names[i] for i in np.flatnonzero(~same & known))
    added = tuple(names[i] for i in np.flatnonzero(~known))
    gone = np.flatnonzero(current & ~np.isin(state.key, inputs.keys))
    removed = tuple((str(state.patient_id[k]), int(state.instance[k])) for k in gone)
    now = set() if exclusion is None else exclusion.keys
    before = {
        (str(p), int(i))
        for p, i in (json.loads(attrs.get("exclude") or "null") or {}).get("keys", ())
    }
    listed = {
        "changed": changed,
        "added": tuple(k for k in added if k not in before),
        "removed": tuple(k for k in removed if k not in now),
        "excluded": tuple(k for k in removed if k in now),
        "included": tuple(k for k in added if k in before),
    }
    return Freshness(
        store=spec.shown,
        root=source.root,
        complete=bool(attrs.get("complete")),
        other=inputs.fingerprint != attrs.get("input_fingerprint") and not any(listed.values()),
        **listed,
    )


def _as_built(spec: StoreSpec, attrs: dict) -> Exclusion | None:
    """The exclusion a store was built with, its verdicts file read again; the keys
    it kept when it was given no file (an :class:`~daskmri.verdicts.Exclusion`)."""
    built = json.loads(attrs.get("exclude") or "null")
    if not built:
        return None
    if built.get("path") is None:
        return Exclusion(built["source"], frozenset((p, int(i)) for p, i in built["keys"]))
    if not os.path.isfile(built["path"]):
        raise FileNotFoundError(
            f"{spec.shown} was built with exclude={built['source']!r}, and "
            f"{built['path']} is gone; pass check(..., exclude=) the verdicts file to check "
            "against, or exclude=None for none"
        )
    return Exclusion(built["source"], frozenset(read_verdicts(built["path"])))
