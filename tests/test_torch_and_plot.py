"""The torch adapter (when torch is installed), its missing-extra error, and the
notebook plotting helper."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import daskmri
from daskmri import BatchIterator


@pytest.fixture(scope="module")
def ds(synth_root):
    return daskmri.load_dataset(synth_root, chunk_size=3, scheduler="sync")


def test_torch_dataloader_yields_the_same_batches_as_tensors(ds):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    from daskmri.torch import TorchBatches

    expected = list(BatchIterator(ds, batch_size=4, seed=5))
    loader = torch.utils.data.DataLoader(
        TorchBatches(BatchIterator(ds, batch_size=4, seed=5)), batch_size=None
    )
    got = list(loader)
    assert len(got) == len(expected) == len(loader)
    for tensors, arrays in zip(got, expected, strict=True):
        assert tensors["image"].dtype == torch.float32
        assert tensors["icontour"].dtype == torch.bool
        for name in ("image", "icontour", "ocontour", "instance"):
            np.testing.assert_array_equal(tensors[name].numpy(), arrays[name])
        assert tensors["patient_id"].tolist() == arrays["patient_id"].tolist()


def test_torch_with_worker_processes_is_refused(ds):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    from daskmri.torch import TorchBatches

    loader = torch.utils.data.DataLoader(
        TorchBatches(BatchIterator(ds, batch_size=4)), batch_size=None, num_workers=2
    )
    with pytest.raises(daskmri.DaskmriError, match="num_workers=0"):
        next(iter(loader))


def test_without_torch_the_error_names_the_extra():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import daskmri.torch\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "pip install 'daskmri[torch]'" in out.stdout, out.stderr


def test_show_draws_a_batch_and_a_dataset(ds):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    import matplotlib

    matplotlib.use("Agg")
    from daskmri.plot import show

    batch = next(iter(BatchIterator(ds, batch_size=6, seed=0)))
    fig = show(batch, columns=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    expected = [f"{p} / {i}" for p, i in zip(batch["patient_id"], batch["instance"], strict=True)]
    assert titles == expected
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (*batch["image"].shape[1:], 3)

    fig = show(ds, records=[0, 5])
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [
        f"{ds.patient_id.values[k]} / {ds.instance.values[k]}" for k in (0, 5)
    ]


def test_overlay_colours_masks_by_place_one_by_one_or_as_a_dict():
    from daskmri.plot import PALETTE, overlay

    image = np.zeros((12, 12))
    masks = []
    for k in range(3):  # three kinds in separate places, so no outline hides another
        mask = np.zeros((12, 12), bool)
        mask[1 + 4 * k : 4 + 4 * k, 1:4] = True
        masks.append(mask)
    rgb = overlay(image, *masks)
    for k in range(3):
        assert rgb[1 + 4 * k, 1].tolist() == list(PALETTE[k])
    named = overlay(image, {"lv": masks[0], "myo": masks[1], "rv": masks[2]})
    np.testing.assert_array_equal(named, rgb)
    # None keeps its place: the third kind is still the third colour.
    assert overlay(image, None, None, masks[2])[9, 1].tolist() == list(PALETTE[2])
    with pytest.raises(TypeError, match="one dict"):
        overlay(image, {"lv": masks[0]}, masks[1])
