"""Which share of every epoch this process serves, and the seed every rank shares:
given, or from ``torch.distributed`` when a process group is up.

torch is never imported here: a process that runs DDP has imported it already, and
one that has not has no process group.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["process_group", "resolve_ranks", "resolve_seed"]


def process_group() -> Any | None:
    """``torch.distributed`` when a process group is up, else None.

    Returns
    -------
    module or None
        The ``torch.distributed`` module, initialised; None without one.

    Examples
    --------
    >>> process_group() is None  # no process group in the doctests
    True
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def resolve_ranks(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: each from the process group when not given, else 0 and 1.

    Parameters
    ----------
    rank, world_size : int or None
        As given to :class:`~daskmri.batches.iterator.BatchIterator`.

    Returns
    -------
    tuple of int
        This process's rank and the number of ranks.

    Raises
    ------
    ValueError
        If one of them is given without the other outside a process group.

    Examples
    --------
    >>> resolve_ranks(None, None), resolve_ranks(1, 3)
    ((0, 1), (1, 3))
    """
    dist = process_group()
    if dist is not None:
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    elif (rank is None) != (world_size is None):
        given = "rank" if world_size is None else "world_size"
        raise ValueError(
            f"{given} was given without {'world_size' if given == 'rank' else 'rank'}, and "
            "torch.distributed is not initialised; pass both (rank=r, world_size=n)"
        )
    return (0 if rank is None else rank), (1 if world_size is None else world_size)


def resolve_seed(seed: int | None, world_size: int) -> int:
    """The seed of every epoch: ``seed``, or a random one that every rank shares.

    Every rank must plan the same epochs, so a random seed comes from rank 0 of the
    process group (a collective: every rank calls this at the same point); outside
    one, several ranks need an explicit seed.

    Parameters
    ----------
    seed : int or None
        The seed asked for; None for a random one.
    world_size : int
        The number of ranks.

    Returns
    -------
    int
        The seed, >= 0.

    Raises
    ------
    ValueError
        If ``seed`` is not an int >= 0, or is None for several ranks outside a
        process group.

    Examples
    --------
    >>> resolve_seed(7, 2), resolve_seed(None, 1) >= 0
    (7, True)
    """
    if seed is not None:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
        return int(seed)
    seed = int(np.random.SeedSequence().entropy % 2**63)
    if world_size == 1:
        return seed
    dist = process_group()
    if dist is None:
        raise ValueError(
            f"world_size={world_size} needs seed=: every rank must plan the same epochs, "
            "and a random seed would differ on each (pass the same seed=... on every rank)"
        )
    shared = [seed]
    dist.broadcast_object_list(shared, src=0)  # a collective: every rank makes its iterator
    return int(shared[0])
