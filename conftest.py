"""Collection rules for the doctests in the package."""

import importlib.util

# daskmri.torch needs the optional torch extra; without it its module cannot be imported.
collect_ignore = [] if importlib.util.find_spec("torch") else ["daskmri/torch.py"]


# The Zarr store needs zarr 3, which needs Python 3.11: on 3.10 daskmri installs without
# it, and the store's doctests skip.
_STORE_DOCTESTS = ("daskmri.dataset.build", "daskmri.store.check", "daskmri.store.open_dataset")


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("zarr") is not None:
        return
    import pytest

    skip = pytest.mark.skip(reason="the Zarr store needs zarr>=3 (Python 3.11+); not installed")
    for item in items:
        if item.name in _STORE_DOCTESTS:
            item.add_marker(skip)
