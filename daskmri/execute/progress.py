"""Progress on stderr, with tqdm: one bar per call, fed by whichever executor runs
the chunks (dask callbacks in process, completions of local workers, futures as
they finish on a cluster)."""

from __future__ import annotations

from tqdm import tqdm

__all__ = ["progress_bar"]

#: ``| 3/5 chunks | 00:01`` after the bar: the count of chunks is what matters.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} chunks | {elapsed}"


def progress_bar(total: int, enabled: bool = True) -> tqdm:
    """A bar over ``total`` chunks; a silent one (every call a no-op) unless
    ``enabled``. Use it as a context manager, or ``close()`` it.

    Examples
    --------
    >>> with progress_bar(3, enabled=False) as bar:
    ...     bar.update(3)
    """
    return tqdm(
        total=total,
        disable=not enabled,
        bar_format=BAR_FORMAT,
        mininterval=0.2,
        dynamic_ncols=True,
        leave=True,
    )
