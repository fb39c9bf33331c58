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

With ``device=``, batches arrive on that device; a compact iterator's
(``BatchIterator(compact=True)``) cross to it as the dataset holds them, about half
the bytes of float32 and bool, and are widened there (:func:`widen_on_device`). On
CUDA each batch is copied from pinned memory on a side stream one batch ahead
(:func:`on_device`), so the copy of the next batch overlaps the current step.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .batches import BatchIterator
from .errors import DaskmriError, MissingExtraError

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as exc:  # chained: torch may be there but broken
    raise MissingExtraError("torch", "torch", "daskmri.torch") from exc

__all__ = ["TorchBatches", "on_device", "plain_widening", "widen_on_device"]

#: What a compact batch holds, and what widening the image needs.
COMPACT = ("pixels", "slope", "intercept", "labels")
IMAGE_FROM = ("pixels", "slope", "intercept")


class TorchBatches(IterableDataset):
    """Batches of a :class:`~daskmri.BatchIterator` as tensors, one epoch per iteration.

    ``image`` is a float32 tensor ``(batch, y, x)``, each mask a bool tensor,
    ``instance`` int64 and ``padding`` bool; ``patient_id`` stays a numpy array of
    str (a tensor cannot hold text). Without ``device``, memory is shared with the
    batch, not copied.

    Parameters
    ----------
    iterator : BatchIterator
        What to serve; its epoch, state, seed, rank and world size are the
        iterator's.
    device : str or torch.device, optional
        Where the tensors go (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...). A compact
        iterator's batches (``compact=True``) cross as they are, then are widened on
        the device into the same batch the model sees without ``compact``, bit for
        bit: ``image = float32(float64(pixels) * slope + intercept)`` and each kind
        ``((labels >> k) & 1).bool()``, ``k`` its place in ``iterator.kinds``. A
        256 x 256 record crosses as ~196 KB (int16 pixels and uint8 labels) instead
        of 393 KB (float32 and two bool masks). On CUDA each batch is copied from
        pinned memory on a side stream, one batch ahead (see :func:`on_device`). None
        (the default): tensors that share memory with the numpy batch (a compact
        iterator's stay compact).

    Raises
    ------
    DaskmriError
        If ``device`` is CUDA and torch has no CUDA; when iterated under a
        ``DataLoader`` with ``num_workers > 1``.

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

    On a device (here the CPU; ``"cuda"`` on a GPU):

    >>> on_cpu = TorchBatches(daskmri.BatchIterator(ds, batch_size=2, seed=0), device="cpu")
    >>> batch = next(iter(on_cpu))
    >>> batch["image"].device, batch["icontour"].dtype
    (device(type='cpu'), torch.bool)
    """

    def __init__(self, iterator: BatchIterator, *, device: Any = None) -> None:
        super().__init__()
        self.iterator = iterator
        self.device = None if device is None else torch.device(device)
        cuda = self.device is not None and self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise DaskmriError(
                f"device {str(self.device)!r} but this torch has no CUDA "
                "(torch.cuda.is_available() is False): pass device='cpu', or install "
                "a CUDA build of torch"
            )

    def __len__(self) -> int:
        return len(self.iterator)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise DaskmriError(
                "use DataLoader(..., num_workers=0): each worker would serve the whole "
                "epoch again, and BatchIterator already fetches ahead in the background"
            )
        if self.device is None:
            for batch in self.iterator:
                yield {name: _tensor(value) for name, value in batch.items()}
            return
        kinds = self.iterator.kinds if getattr(self.iterator, "compact", False) else None
        yield from on_device(self.iterator, self.device, kinds=kinds)


def _tensor(value: np.ndarray) -> Any:
    """A tensor sharing ``value``'s memory; text stays a numpy array."""
    return value if value.dtype.kind in "UO" else torch.from_numpy(np.asarray(value))


def _host(batch: dict[str, np.ndarray], *, pin: bool) -> dict[str, Any]:
    """A batch's tensors on the host (pinned when ``pin``: CUDA copies them without
    blocking only from pinned memory). Unsigned labels wider than 8 bits are viewed
    as the signed type of their width: torch shifts no uint16/32/64, and bit ``k``
    of the signed view is bit ``k`` of the unsigned value."""
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        if name == "labels" and value.dtype.kind == "u" and value.itemsize > 1:
            value = value.view(f"i{value.itemsize}")
        tensor = _tensor(value)
        out[name] = tensor.pin_memory() if pin and isinstance(tensor, torch.Tensor) else tensor
    return out


def plain_widening(batch: dict[str, np.ndarray]) -> bool:
    """Whether a compact batch's image is exactly its pixels cast to float32.

    So it is when every slope is 1 and every intercept 0, and the pixels are float32
    (copied as they are) or integers of at most 16 bits (exact in float32, so the
    float64 route gives the same values).

    Parameters
    ----------
    batch : dict
        A compact batch (numpy, on the host: no device sync to decide).

    Returns
    -------
    bool
        True when the fast path gives :func:`daskmri.compact.widen`'s values.

    Examples
    --------
    >>> plain_widening({"pixels": np.zeros((1, 2, 2), np.int16), "slope": np.ones(1),
    ...        "intercept": np.zeros(1)})
    True
    """
    pixels = np.asarray(batch["pixels"])
    narrow = pixels.dtype == np.float32 or (pixels.dtype.kind in "iu" and pixels.itemsize <= 2)
    return bool(
        narrow
        and (np.asarray(batch["slope"]) == 1).all()
        and (np.asarray(batch["intercept"]) == 0).all()
    )


def widen_on_device(tensors: dict[str, Any], kinds: tuple[str, ...], *, plain: bool) -> dict:
    """The batch the model sees from a compact batch's tensors, made where they are.

    ``image = (pixels.double() * slope + intercept).float()``: float64 arithmetic in
    two separate kernels (a product, then a sum, each rounded once, as numpy does),
    then one cast: :func:`daskmri.compact.widen`'s values, bit for bit. With
    ``plain``, ``pixels.float()``, the same values (see :func:`plain_widening`). Kind ``k`` is
    ``((labels >> k) & 1).bool()``.

    Parameters
    ----------
    tensors : dict
        ``pixels``, ``slope``, ``intercept``, ``labels`` (signed or uint8) and the
        rest of the batch, all on one device.
    kinds : tuple of str
        The bit order (``BatchIterator.kinds``).
    plain : bool
        Take the fast path: every slope 1 and intercept 0 and narrow pixels.

    Returns
    -------
    dict
        ``image`` and one bool tensor per kind, then the rest of the batch (the
        coordinates, ``padding``) as it was.

    Examples
    --------
    >>> tensors = {"pixels": torch.tensor([[[2, 3]]], dtype=torch.int16),
    ...            "slope": torch.tensor([0.5], dtype=torch.float64),
    ...            "intercept": torch.tensor([-1.0], dtype=torch.float64),
    ...            "labels": torch.tensor([[[1, 2]]], dtype=torch.uint8)}
    >>> out = widen_on_device(tensors, ("i", "o"), plain=False)
    >>> out["image"], out["o"]
    (tensor([[[0.0000, 0.5000]]]), tensor([[[False,  True]]]))
    """
    out, used = {}, set()
    if all(name in tensors for name in IMAGE_FROM):
        pixels, slope, intercept = (tensors[name] for name in IMAGE_FROM)
        if plain:
            out["image"] = pixels.to(torch.float32)
        else:
            wide = pixels.to(torch.float64) * slope.to(torch.float64)[:, None, None]
            wide = wide + intercept.to(torch.float64)[:, None, None]
            out["image"] = wide.to(torch.float32)
        used.update(IMAGE_FROM)
    if "labels" in tensors:
        labels = tensors["labels"]
        for k, kind in enumerate(kinds):
            out[kind] = ((labels >> k) & 1).bool()
        used.add("labels")
    out.update((name, value) for name, value in tensors.items() if name not in used)
    return out


def on_device(
    batches: Iterable[dict[str, np.ndarray]], device: Any, *, kinds: tuple[str, ...] | None = None
) -> Iterator[dict]:
    """Numpy batches as tensors on ``device``, compact ones widened there.

    Compact batches (``kinds`` given) are widened by :func:`widen_on_device`.

    On CUDA, each batch is copied into pinned memory and sent without blocking on a
    side stream (and widened on it) while the batch before it is handed out: the copy
    of the next batch overlaps the current step. An event recorded after each batch's
    work is what the consumer's stream waits on, so no kernel of the step reads an
    unfinished copy (never the whole side stream, which by then carries the next
    batch too). Elsewhere, batches are moved and widened in turn.

    Parameters
    ----------
    batches : iterable of dict
        Numpy batches (a :class:`~daskmri.BatchIterator`).
    device : str or torch.device
        Where to.
    kinds : tuple of str, optional
        The bit order of compact batches; None: batches are moved as they are.

    Returns
    -------
    iterator of dict
        Tensors on ``device``; text (``patient_id``) stays numpy.

    Examples
    --------
    >>> batch = {"pixels": np.array([[[7]]], np.uint16), "slope": np.ones(1),
    ...          "intercept": np.zeros(1), "labels": np.array([[[2]]], np.uint8),
    ...          "patient_id": np.array(["A"])}
    >>> out = next(on_device([batch], "cpu", kinds=("i", "o")))
    >>> out["image"], out["o"], out["patient_id"]
    (tensor([[[7.]]]), tensor([[[True]]]), array(['A'], dtype='<U1'))
    """
    device = torch.device(device)
    if device.type != "cuda":
        for batch in batches:
            yield _arrive(batch, device, kinds, pin=False)[1]
        return
    yield from _ahead_on_cuda(batches, device, kinds)


def _arrive(batch: dict, device: Any, kinds: tuple[str, ...] | None, *, pin: bool):
    """``(host tensors, batch on device)``: moved (without blocking when ``pin``) and,
    when compact, widened, all on the current stream."""
    fast = kinds is not None and all(name in batch for name in IMAGE_FROM) and plain_widening(batch)
    host = _host(batch, pin=pin)
    moved = {
        name: value.to(device, non_blocking=pin) if isinstance(value, torch.Tensor) else value
        for name, value in host.items()
    }
    return host, moved if kinds is None else widen_on_device(moved, kinds, plain=fast)


def _ahead_on_cuda(batches: Iterable[dict], device: Any, kinds) -> Iterator[dict]:
    """Batch ``k + 1`` copied and widened on a side stream before batch ``k`` is handed
    out (see :func:`on_device`)."""
    side = torch.cuda.Stream(device=device)
    # Pinned host tensors with the event after their copy, kept until it is done: a
    # non-blocking copy reads them after .to() returns.
    in_flight: collections.deque = collections.deque()
    ready = None
    for batch in batches:
        with torch.cuda.stream(side):
            host, out = _arrive(batch, device, kinds, pin=True)
            done = torch.cuda.Event()
            done.record(side)
        in_flight.append((done, host))
        if ready is not None:
            yield _handed(*ready, device)
        ready = (done, out)
        while in_flight and in_flight[0][0].query():
            in_flight.popleft()
    if ready is not None:
        yield _handed(*ready, device)


def _handed(done: Any, out: dict, device: Any) -> dict:
    """A batch made on the side stream, for the consumer's stream: its kernels wait
    for ``done``, and the caching allocator does not reuse the batch's memory before
    that stream is through with it (it was allocated on the side stream)."""
    current = torch.cuda.current_stream(device)
    current.wait_event(done)
    for value in out.values():
        if isinstance(value, torch.Tensor):
            value.record_stream(current)
    return out
