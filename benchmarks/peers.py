"""The loaders daskmri is compared with, each parsing DICOM, contours and masks per item
every epoch, as the original design did. In a module of their own so that worker
processes (multiprocessing, torch) can import them.

Each ``run_*`` takes the scan table's rows and returns what one epoch served: the
``(patient_id, instance)`` keys in order and the sum of the images.
"""

from __future__ import annotations

import multiprocessing
import random

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from daskmri.contours import polygon_mask, read_contour

BATCH = 8


def parse_item(item: tuple) -> tuple:
    """One record, parsed the plain way: pydicom's pixel_array with the modality
    rescale, then each contour and its mask."""
    patient_id, instance, image_path, icontour_path, ocontour_path = item
    ds = pydicom.dcmread(image_path)
    image = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    masks = []
    for path in (icontour_path, ocontour_path):
        if path is None:
            masks.append(np.zeros(image.shape, bool))
        else:
            masks.append(polygon_mask(read_contour(path, shape=image.shape), image.shape))
    return patient_id, instance, image, masks[0], masks[1]


def items_of(table) -> list[tuple]:
    return [
        (r.patient_id, int(r.instance), r.image_path, r.icontour_path, r.ocontour_path)
        for r in table.itertuples()
        if r.problem is None
    ]


def _shuffled(items: list[tuple], seed: int) -> list[tuple]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def _tally(parsed, keys: list, total: list) -> None:
    patient_id, instance, image, _, _ = parsed
    keys.append((patient_id, instance))
    total[0] += float(image.sum(dtype=np.float64))


def run_plain(items: list[tuple], seed: int = 0) -> tuple:
    """A loop in the training process, item by item, in random batches of 8."""
    keys, total = [], [0.0]
    order = _shuffled(items, seed)
    for start in range(0, len(order), BATCH):
        for item in order[start : start + BATCH]:
            _tally(parse_item(item), keys, total)
    return keys, total[0]


def _producer(items: list[tuple], seed: int, queue) -> None:
    order = _shuffled(items, seed)
    for start in range(0, len(order), BATCH):
        queue.put([parse_item(item) for item in order[start : start + BATCH]])
    queue.put(None)


def run_producer(items: list[tuple], seed: int = 0) -> tuple:
    """The original design: one producer process fills a Queue(maxsize=2) with random
    batches of 8 while the training process consumes them."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue(maxsize=2)
    process = context.Process(target=_producer, args=(items, seed, queue), daemon=True)
    process.start()
    keys, total = [], [0.0]
    try:
        while (batch := queue.get(timeout=600)) is not None:
            for parsed in batch:
                _tally(parsed, keys, total)
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
    return keys, total[0]


def run_pool(items: list[tuple], seed: int = 0, processes: int = 2) -> tuple:
    """multiprocessing.Pool(2) parsing items in order of a random permutation."""
    keys, total = [], [0.0]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for parsed in pool.imap(parse_item, _shuffled(items, seed), chunksize=BATCH):
            _tally(parsed, keys, total)
    return keys, total[0]


class _TorchItems:
    """A map-style dataset for torch's DataLoader (defined lazily: torch is optional)."""

    def __init__(self, items: list[tuple]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        patient_id, instance, image, inner, outer = parse_item(self.items[index])
        return {
            "patient_id": patient_id,
            "instance": instance,
            "image": image,
            "icontour": inner,
            "ocontour": outer,
        }


def run_torch(items: list[tuple], seed: int = 0, workers: int = 2) -> tuple:
    """torch.utils.data.DataLoader(batch_size=8, shuffle=True, num_workers=2)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        _TorchItems(items),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        generator=generator,
        multiprocessing_context="spawn",
    )
    keys, total = [], [0.0]
    for batch in loader:
        keys.extend(zip(batch["patient_id"], batch["instance"].tolist(), strict=True))
        total[0] += float(batch["image"].double().sum())
    return keys, total[0]
