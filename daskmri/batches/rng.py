"""The random streams of the batches, by name: every random choice of an epoch's
plan and of its transforms draws from one of them, seeded from ``(seed, epoch,
stream, ...)``, so the same seed gives the same batches on every rank, run and
resume.

The numbers are part of the saved state's meaning: a run resumed from a
``state_dict`` replays the plan from them, so a stream keeps its number forever (a
new stream takes a new one).

================  ===  =========================================================
stream            no.  draws
================  ===  =========================================================
``ORDER``         0    the order the chunks of an epoch are visited in
``NOISE``         1    the shuffle of each chunk's records in the base order
``RANK_SHARE``    2    the shuffle of each step of a rank's share; keyed by the
                       stretch (generation) and the rank
``TRANSFORM``     3    the generator handed to ``transform``; keyed by the
                       global batch index
================  ===  =========================================================
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Stream", "generator", "split_generator"]


class Stream(enum.IntEnum):
    """A named random stream of an epoch; the value is its number in the seed."""

    ORDER = 0
    NOISE = 1
    RANK_SHARE = 2
    TRANSFORM = 3


def generator(seed: int, epoch: int, stream: Stream, *extra: int) -> np.random.Generator:
    """The generator of ``stream`` in ``epoch``, for the extra keys ``extra``.

    Parameters
    ----------
    seed : int
        The seed of the whole sequence of epochs.
    epoch : int
        The epoch.
    stream : Stream
        Which random choice draws from it.
    *extra : int
        Further keys of the stream (a rank, a batch index), in a fixed order.

    Returns
    -------
    numpy.random.Generator
        Seeded from ``[seed, epoch, stream, *extra]``.

    Raises
    ------
    TypeError
        If ``stream`` is not a :class:`Stream` (a bare number would hide a typo).

    Examples
    --------
    >>> a = generator(5, 0, Stream.TRANSFORM, 7).random()
    >>> a == np.random.default_rng([5, 0, 3, 7]).random()
    True
    >>> a == generator(5, 0, Stream.TRANSFORM, 8).random()
    False
    """
    if not isinstance(stream, Stream):
        raise TypeError(f"stream must be a Stream (Stream.ORDER, ...), got {stream!r}")
    return np.random.default_rng([seed, epoch, int(stream), *extra])


def split_generator(seed: int) -> np.random.Generator:
    """The generator of :func:`daskmri.split`: from the seed alone, no epoch (a split
    is made once, outside any epoch; its parts stay those of earlier versions).

    Parameters
    ----------
    seed : int
        The split's seed.

    Returns
    -------
    numpy.random.Generator
        ``numpy.random.default_rng(seed)``.

    Examples
    --------
    >>> split_generator(0).random() == np.random.default_rng(0).random()
    True
    """
    return np.random.default_rng(seed)
