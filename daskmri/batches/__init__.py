"""Batches for a training loop: the pure plan and the iterator that loads it.

=================  ==============================================================
``schema.py``      :class:`BatchSchema`: every epoch's order, rank shares, padding,
                   stretches of an epoch served by other configurations (pure)
``iterator.py``    :class:`BatchIterator`: arguments resolved, epochs made and asked
``epoch.py``       ``Epoch``: one pass, a state machine with its batch thread
``loading.py``     an epoch's plan loaded: chunks fetched ahead, batches assembled
``fetching.py``    ``Fetcher.submit(chunk)``, whatever the backend
``serving.py``     what is fetched (compact arrays) and served (widened or not)
``wire.py``        a chunk's arrays across the wire (blosc), run on workers
``buffers.py``     ``Recycler``: batches made in the memory of batches let go
``ranks.py``       rank, world size and the shared seed
``rng.py``         the random streams by name (``Stream``, ``generator``)
``splitting.py``   :func:`split`: parts of a dataset, whole patients apiece
=================  ==============================================================
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    globals(),
    {
        "daskmri.batches.schema": ("BatchSchema", "RankPlan", "Stretch"),
        "daskmri.batches.iterator": ("BatchIterator",),
        "daskmri.batches.splitting": ("split",),
    },
)
