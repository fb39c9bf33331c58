"""Where a store lives (:class:`StoreSpec`), what is there now
(:func:`what_is_there`), and whether daskmri may write there (:func:`claim`):
daskmri deletes or overwrites only what it made."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import zarr

from ..errors import StoreError

__all__ = ["StoreSpec", "claim", "made_by_daskmri", "refuse_inside_dataset", "what_is_there"]


@dataclass(frozen=True)
class StoreSpec:
    """Where a store lives: a local path or an fsspec URL that zarr accepts,
    plus fsspec ``storage_options``. Small and picklable: each chunk task gets one
    and opens the store itself, so pixels never pass through the client."""

    url: str
    storage_options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, store: str | os.PathLike[str], storage_options: dict | None = None) -> StoreSpec:
        url = os.fspath(store)
        # A file:// URL is a local path; zarr's local store creates folders as needed,
        # where fsspec's local filesystem would not.
        url = url.removeprefix("file://")
        if "://" not in url:
            url = os.path.abspath(url)
        return cls(url, tuple(sorted((storage_options or {}).items())))

    def options(self) -> dict:
        # zarr only accepts storage_options for URLs.
        return {"storage_options": dict(self.storage_options)} if "://" in self.url else {}

    def exists(self) -> bool:
        try:
            zarr.open_group(self.url, mode="r", **self.options())
        except (
            FileNotFoundError,
            zarr.errors.GroupNotFoundError,
            zarr.errors.NodeTypeValidationError,
        ):
            return False
        return True

    def group(self, mode: str = "r"):
        try:
            return zarr.open_group(self.url, mode=mode, **self.options())
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreError(
                f"no Zarr store at {self.url!r}; make one with daskmri.build(root, store)"
            ) from exc

    def array(self, name: str, mode: str = "r+"):
        return zarr.open_array(self.url, path=name, mode=mode, **self.options())

    def filesystem(self):
        """The fsspec filesystem and the path in it.

        Raises
        ------
        StoreError
            If fsspec cannot open the URL (an unknown protocol, a backend such as s3fs
            that is not installed).
        """
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.url, **dict(self.storage_options))
        except (ImportError, ValueError) as exc:
            reason = " ".join(str(exc).split())
            raise StoreError(
                f"cannot open the store {self.url!r}: {reason}; check the URL, and install "
                "the fsspec backend for its protocol (s3fs for s3://, gcsfs for gs://, ...)"
            ) from None


def what_is_there(spec: StoreSpec) -> str:
    """What the store's path holds: ``"absent"``, ``"empty"`` (a folder with
    nothing in it), ``"daskmri"`` (a store daskmri made, of any format), ``"file"``,
    ``"zarr"`` (a Zarr node daskmri did not make) or ``"other"`` (a folder of other
    things). Reads one small metadata object at most."""
    fs, path = spec.filesystem()
    if not fs.exists(path):
        return "absent"
    if not fs.isdir(path):
        return "file"
    if not fs.ls(path, detail=False):
        return "empty"
    metadata = f"{path.rstrip('/')}/zarr.json"
    if not fs.isfile(metadata):
        return "other"
    try:
        node = json.loads(fs.cat_file(metadata))
    except (OSError, ValueError):
        return "other"
    if not isinstance(node, dict) or node.get("node_type") != "group":
        return "zarr"
    return "daskmri" if made_by_daskmri(node.get("attributes")) else "zarr"


def made_by_daskmri(attrs: Any) -> bool:
    """Whether a Zarr group's attributes are those of a store daskmri made (of any
    format). Every such store says so in ``created_by``: a format number and a chunk
    size alone could be anyone's."""
    if not isinstance(attrs, dict):
        return False
    signed = str(attrs.get("created_by", "")).startswith("daskmri ")
    return signed and isinstance(attrs.get("format"), int) and "chunk_size" in attrs


def claim(spec: StoreSpec, *, root: str | os.PathLike[str] | None = None) -> str:
    """Check, before anything is written, that daskmri may write a store at ``spec``:
    the path is absent, an empty folder or a daskmri store, and it neither is, holds
    nor lies inside the dataset folder ``root``. Returns :func:`what_is_there`.

    Raises
    ------
    StoreError
        Naming the path, what is there, and the fix. Every ``mode`` is refused
        alike: ``"overwrite"`` replaces only a daskmri store.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> claim(StoreSpec.of(folder / "new.zarr")), claim(StoreSpec.of(folder))
    ('absent', 'empty')
    >>> _ = (folder / "thesis.txt").write_text("years of work")
    >>> claim(StoreSpec.of(folder))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.StoreError: ... holds files that daskmri did not make ...
    """
    if root is not None:
        fs, path = spec.filesystem()
        local = getattr(fs, "local_file", False)  # a path, file://, local://, ...
        refuse_inside_dataset(path if local else spec.url, root, what="the store path")
    there = what_is_there(spec)
    fix = "pass a path that does not exist yet (or an empty folder) for the store"
    if there == "file":
        raise StoreError(f"{spec.url!r} is a file, not a daskmri store; {fix}")
    if there == "zarr":
        raise StoreError(
            f"{spec.url!r} is a Zarr store that daskmri did not make, and daskmri never "
            f"overwrites what it did not make (not even with mode='overwrite'); {fix}"
        )
    if there == "other":
        fs, path = spec.filesystem()
        names = sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise StoreError(
            f"{spec.url!r} holds files that daskmri did not make ({shown}), and daskmri "
            f"never deletes or overwrites them (not even with mode='overwrite'); {fix}"
        )
    return there


def refuse_inside_dataset(
    path: str | os.PathLike[str], root: str | os.PathLike[str], *, what: str = "the path"
) -> None:
    """Refuse to write at ``path`` when it is the dataset folder ``root``, holds it, or
    lies inside it (links resolved).

    Raises
    ------
    StoreError
        Saying which, and to write outside the dataset folder.
    """
    path, root = os.fspath(path), os.fspath(root)
    if ("://" in path) != ("://" in root):
        return  # one on this disk, the other at a URL
    if "://" in path:
        # Object stores have no links: the URLs say it all (a trailing / aside).
        path, root = path.rstrip("/"), root.rstrip("/")
    else:
        path, root = os.path.realpath(path), os.path.realpath(root)
    if path == root or _inside(root, path):
        raise StoreError(
            f"{what} {path!r} is (or holds) the dataset folder {root!r}; writing "
            "there would destroy the dataset. Write outside the dataset folder"
        )
    if _inside(path, root):
        raise StoreError(
            f"{what} {path!r} lies inside the dataset folder {root!r}, which "
            "daskmri reads; write outside the dataset folder"
        )


def _inside(path: str, folder: str) -> bool:
    return path != folder and os.path.commonpath([path, folder]) == folder
