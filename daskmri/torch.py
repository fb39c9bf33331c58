"""PyTorch adapter: a :class:`BatchIterator` as a ``torch.utils.data.IterableDataset``.

Needs the ``torch`` extra (``pip install 'daskmri[torch]'``)::

    from daskmri.torch import TorchBatches
    loader = torch.utils.data.DataLoader(TorchBatches(it), batch_size=None)

``batch_size=None`` because the iterator already makes the batches, and
``num_workers=0`` because it already fetches them in the background.

Under DDP every process wraps the same iterator: it takes its ``rank`` and
``world_size`` from ``torch.distributed``, serves its own share of each epoch, and
every rank yields ``len(loader)`` batches, so no rank waits for ever in an
all-reduce. ``batch["padding"]`` marks the records repeated to even out the shares.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .batches import BatchIterator
from .errors import DaskmriError, MissingExtraError

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as exc:  # chained: torch may be there but broken
    raise MissingExtraError("torch", "torch", "daskmri.torch") from exc

__all__ = ["TorchBatches"]


class TorchBatches(IterableDataset):
    """Batches of a :class:`~daskmri.BatchIterator` as tensors, one epoch per iteration.

    ``image`` is a float32 tensor ``(batch, y, x)``, each mask a bool tensor,
    ``instance`` int64 and ``padding`` bool; ``patient_id`` stays a numpy array of
    str (a tensor cannot hold text). Memory is shared with the batch, not copied.

    Parameters
    ----------
    iterator : BatchIterator
        What to serve; its epoch, state, seed, rank and world size are the
        iterator's.

    Examples
    --------
    >>> import tempfile, daskmri, torch
    >>> root = daskmri.synth.make_dataset(tempfile.mkdtemp(), patients=1, slices=6, shape=(16, 16))
    >>> ds = daskmri.load_dataset(root, scheduler="sync")
    >>> loader = torch.utils.data.DataLoader(
    ...     TorchBatches(daskmri.BatchIterator(ds, batch_size=2, seed=0)), batch_size=None
    ... )
    >>> batch = next(iter(loader))
    >>> batch["image"].dtype, tuple(batch["image"].shape)
    (torch.float32, (2, 16, 16))
    """

    def __init__(self, iterator: BatchIterator) -> None:
        super().__init__()
        self.iterator = iterator

    def __len__(self) -> int:
        return len(self.iterator)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise DaskmriError(
                "use DataLoader(..., num_workers=0): each worker would serve the whole "
                "epoch again, and BatchIterator already fetches ahead in the background"
            )
        for batch in self.iterator:
            yield {
                name: value if value.dtype.kind in "UO" else torch.from_numpy(np.asarray(value))
                for name, value in batch.items()
            }
