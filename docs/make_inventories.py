"""Write the intersphinx inventories in docs/_inventories/, offline.

The docs link to xarray, dask, distributed, numpy, pandas, pydicom and Python. Intersphinx
would download each project's ``objects.inv`` at every build; these inventories are
generated here instead, from the installed packages, and never downloaded: each lists the
objects that daskmri's docs and docstrings can name, at the URL where that project's own
documentation puts them. Every object is imported first, so an inventory never names
something the installed version lacks, and each records that version.

Run it after adding a cross-reference to another project (``python docs/make_inventories.py``)
and commit what it writes; ``docs/conf.py`` reads them.
"""

from __future__ import annotations

import importlib
import sys
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent / "_inventories"

# Each project's documented URL patterns (relative to the base URL in docs/conf.py):
# ``{}`` is the object's full name.
CLASS, FUNCTION, METHOD, MODULE, EXCEPTION = "class", "function", "method", "module", "exception"

PROJECTS = {
    "xarray": {
        "module": "xarray",
        "url": "generated/{}.html",
        "objects": {
            "xarray.Dataset": CLASS,
            "xarray.DataArray": CLASS,
            "xarray.open_dataset": FUNCTION,
            "xarray.open_zarr": FUNCTION,
            "xarray.Dataset.isel": METHOD,
            "xarray.Dataset.sel": METHOD,
            "xarray.Dataset.identical": METHOD,
            "xarray.Dataset.close": METHOD,
            "xarray.Dataset.persist": METHOD,
            "xarray.Dataset.chunk": METHOD,
        },
    },
    "numpy": {
        "module": "numpy",
        "url": "reference/generated/{}.html",
        "objects": {
            "numpy.ndarray": CLASS,
            "numpy.dtype": CLASS,
            "numpy.stack": FUNCTION,
            "numpy.loadtxt": FUNCTION,
            "numpy.frombuffer": FUNCTION,
            "numpy.random.Generator": (CLASS, "reference/random/generator.html#{}"),
            "numpy.random.default_rng": (FUNCTION, "reference/random/generator.html#{}"),
        },
    },
    "dask": {
        "module": "dask",
        "url": "generated/{}.html",
        "objects": {
            "dask.array.Array": CLASS,
            "dask.compute": FUNCTION,
            "dask.persist": FUNCTION,
            "dask.delayed": FUNCTION,
            "dask.array.from_array": FUNCTION,
        },
    },
    "distributed": {
        "module": "distributed",
        "url": "api.html#{}",
        "objects": {
            "distributed.Client": CLASS,
            "distributed.LocalCluster": CLASS,
            "distributed.Future": CLASS,
            "distributed.Client.close": METHOD,
            "distributed.Client.as_current": METHOD,
            "distributed.security.Security": CLASS,
        },
    },
    "pandas": {
        "module": "pandas",
        "url": "reference/api/{}.html",
        "objects": {
            "pandas.DataFrame": CLASS,
            "pandas.Series": CLASS,
            "pandas.read_csv": FUNCTION,
        },
    },
    "pydicom": {
        "module": "pydicom",
        "url": "reference/generated/{}.html",
        "objects": {
            "pydicom.dataset.Dataset": CLASS,
            "pydicom.dataset.FileDataset": CLASS,
            "pydicom.filereader.dcmread": FUNCTION,
            "pydicom.pixels.apply_modality_lut": FUNCTION,
            "pydicom.pixels.pixel_array": FUNCTION,
        },
    },
    "python": {
        "module": "os",
        "url": None,
        "objects": {
            "os.PathLike": (CLASS, "library/os.html#{}"),
            "os.scandir": (FUNCTION, "library/os.html#{}"),
            "os.DirEntry": (CLASS, "library/os.html#{}"),
            "pathlib.Path": (CLASS, "library/pathlib.html#{}"),
            "logging.Logger": (CLASS, "library/logging.html#{}"),
            "logging.getLogger": (FUNCTION, "library/logging.html#{}"),
            "collections.abc.Sequence": (CLASS, "library/collections.abc.html#{}"),
            "collections.abc.Mapping": (CLASS, "library/collections.abc.html#{}"),
            "collections.abc.Callable": (CLASS, "library/collections.abc.html#{}"),
            "dataclasses.replace": (FUNCTION, "library/dataclasses.html#{}"),
            "tempfile.TemporaryDirectory": (CLASS, "library/tempfile.html#{}"),
            "ValueError": (EXCEPTION, "library/exceptions.html#{}"),
            "TypeError": (EXCEPTION, "library/exceptions.html#{}"),
            "OSError": (EXCEPTION, "library/exceptions.html#{}"),
            "FileNotFoundError": (EXCEPTION, "library/exceptions.html#{}"),
            "PermissionError": (EXCEPTION, "library/exceptions.html#{}"),
            "RuntimeError": (EXCEPTION, "library/exceptions.html#{}"),
            "KeyError": (EXCEPTION, "library/exceptions.html#{}"),
            "UserWarning": (EXCEPTION, "library/exceptions.html#{}"),
            "int": (CLASS, "library/functions.html#{}"),
            "float": (CLASS, "library/functions.html#{}"),
            "bool": (CLASS, "library/functions.html#{}"),
            "str": (CLASS, "library/stdtypes.html#{}"),
            "dict": (CLASS, "library/stdtypes.html#{}"),
            "list": (CLASS, "library/stdtypes.html#{}"),
            "tuple": (CLASS, "library/stdtypes.html#{}"),
            "bytes": (CLASS, "library/stdtypes.html#{}"),
        },
        # What numpydoc's type links name (its DEFAULT_LINKS): glossary terms and labels.
        "std": {
            "bltin-boolean-values": (
                "label",
                "library/stdtypes.html#bltin-boolean-values",
                "Boolean Values",
            ),
            "sequence": ("term", "glossary.html#term-sequence", "sequence"),
            "iterable": ("term", "glossary.html#term-iterable", "iterable"),
            "generator": ("term", "glossary.html#term-generator", "generator"),
        },
    },
}
# numpy's glossary and scalar types, for numpydoc's array_like and scalar.
PROJECTS["numpy"]["std"] = {
    "array_like": ("term", "glossary.html#term-array_like", "array_like"),
    "arrays.scalars": ("label", "reference/arrays.scalars.html#arrays-scalars", "Scalars"),
}


def resolve(name: str) -> object:
    """Import ``name`` (a module attribute path): it must exist in the installed version."""
    parts = name.split(".")
    if len(parts) == 1:
        import builtins

        return getattr(builtins, name)
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {name}")


def inventory(project: str, spec: dict) -> bytes:
    """One project's ``objects.inv`` (Sphinx inventory version 2)."""
    if spec["module"] == "os":
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
    else:
        version = importlib.import_module(spec["module"]).__version__
    lines = []
    for name, kind in sorted(spec["objects"].items()):
        role, url = kind if isinstance(kind, tuple) else (kind, spec["url"])
        resolve(name)
        # ``$`` stands for the object's name in an inventory's URI; "-" for its display name.
        uri = url.format("$") if url.endswith("{}") else url.format(name) + "#" + name
        lines.append(f"{name} py:{role} 1 {uri} -")
    for name, (role, uri, shown) in spec.get("std", {}).items():
        lines.append(f"{name} std:{role} -1 {uri} {shown}")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    return header.encode() + zlib.compress(("\n".join(sorted(set(lines))) + "\n").encode())


def main() -> None:
    """Write every inventory, then read each back as Sphinx would."""
    from sphinx.util.inventory import InventoryFile

    OUT.mkdir(exist_ok=True)
    for project, spec in PROJECTS.items():
        path = OUT / f"{project}.inv"
        path.write_bytes(inventory(project, spec))
        with path.open("rb") as stream:
            InventoryFile.load(stream, "https://example.invalid", lambda base, uri: uri)
        print(f"wrote {path} ({len(spec['objects'])} objects)")


if __name__ == "__main__":
    main()
