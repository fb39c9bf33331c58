"""How a chunk's arrays cross from a worker to the training process: as they are
(:func:`dict_of`), or compressed (:func:`pack`, undone by :func:`unpack`). Both run
as tasks on the workers, so this module needs numpy (and numcodecs, imported when
packing) only: any dtype, any shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PACK_LIMIT", "dict_of", "pack", "unpack"]

#: Arrays larger than this cross uncompressed: blosc takes at most 2 GiB at a time.
PACK_LIMIT = 2**31 - 64


def dict_of(names: Sequence[str], values: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """A chunk's arrays by name, as they are (a task on a worker).

    Parameters
    ----------
    names : sequence of str
        The variables' names.
    values : sequence of numpy.ndarray
        Their blocks, in the same order.

    Returns
    -------
    dict
        ``{name: block}``.

    Raises
    ------
    ValueError
        If there are not as many values as names.

    Examples
    --------
    >>> dict_of(["a"], [np.zeros(2)])
    {'a': array([0., 0.])}
    """
    return dict(zip(names, values, strict=True))


def pack(names: Sequence[str], values: Sequence[np.ndarray]) -> dict[str, tuple]:
    """A chunk's arrays compressed for the trip from a worker to the client (a task on
    a worker).

    blosc-lz4 with byte shuffle, lossless, any numeric dtype: several times smaller
    for images and far smaller for masks and label bits. Packing pays off across a
    network; on one machine moving a chunk costs less than packing it (the figures:
    benchmarks/iterate.py). Object arrays and arrays over :data:`PACK_LIMIT` cross as
    they are.

    Parameters
    ----------
    names : sequence of str
        The variables' names.
    values : sequence of numpy.ndarray
        Their blocks, in the same order.

    Returns
    -------
    dict
        ``{name: (bytes, shape, dtype)}``, or ``{name: (None, array)}`` for an array
        sent as it is.

    Raises
    ------
    ValueError
        If there are not as many values as names.

    Examples
    --------
    >>> image = np.linspace(0, 1, 4096, dtype=np.float32).reshape(4, 32, 32)
    >>> packed = pack(["image"], [image])
    >>> len(packed["image"][0]) < image.nbytes
    True
    >>> np.array_equal(unpack(packed)["image"], image)
    True
    """
    import numcodecs

    codec = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    out = {}
    for name, value in zip(names, values, strict=True):
        value = np.ascontiguousarray(value)
        if value.nbytes > PACK_LIMIT or value.dtype.hasobject:
            out[name] = (None, value)
        else:
            out[name] = (codec.encode(value), value.shape, value.dtype.str)
    return out


def unpack(packed: dict[str, tuple]) -> dict[str, np.ndarray]:
    """The arrays of :func:`pack`, decompressed straight into new arrays.

    Parameters
    ----------
    packed : dict
        What :func:`pack` returned.

    Returns
    -------
    dict
        ``{name: array}``, each equal to the one packed, dtype and shape included.

    Raises
    ------
    RuntimeError
        If a compressed buffer is damaged (numcodecs' error).

    Examples
    --------
    >>> bits = np.arange(12, dtype=np.uint16).reshape(3, 4)
    >>> unpack(pack(["labels"], [bits]))["labels"].dtype
    dtype('uint16')
    """
    import numcodecs

    codec = numcodecs.Blosc()
    out = {}
    for name, (raw, *rest) in packed.items():
        if raw is None:
            out[name] = rest[0]
            continue
        shape, dtype = rest
        array = np.empty(shape, dtype=dtype)
        codec.decode(raw, out=array.reshape(-1).view(np.uint8))
        out[name] = array
    return out
