"""Where a store lives (:class:`StoreSpec`), what is there now
(:func:`what_is_there`), and whether daskmri may write there (:func:`claim`):
daskmri deletes or overwrites only what it made."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import zarr

from ..errors import StoreError, one_line, redact

__all__ = [
    "StoreSpec",
    "at_once",
    "claim",
    "made_by_daskmri",
    "refuse_inside_dataset",
    "what_is_there",
    "writer",
]


#: The fix for a store that cannot be reached, said in every such error.
REACH_FIX = (
    "check the URL and that its bucket exists, the credentials (storage_options "
    "key/secret/token, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment of "
    "the client and of every worker) and the endpoint (endpoint_url or AWS_ENDPOINT_URL)"
)
#: The packages of the object stores' clients: their exceptions mean the store
#: cannot be reached (a refused key, no such endpoint, a timeout).
_CLIENT_PACKAGES = (
    "botocore",
    "aiobotocore",
    "aiohttp",
    "s3fs",
    "gcsfs",
    "google",
    "adlfs",
    "azure",
)


@dataclass(frozen=True, repr=False)
class StoreSpec:
    """Where a store lives: a local path or an fsspec URL that zarr accepts,
    plus fsspec ``storage_options``. Small and picklable: each chunk task gets one
    and opens the store itself, so pixels never pass through the client.

    Its ``repr`` and :attr:`shown` never show a credential (``storage_options``
    are left out, a URL's ``user:password@`` is masked): use them in messages."""

    url: str
    storage_options: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        return f"StoreSpec({self.shown!r})"

    @property
    def shown(self) -> str:
        """The URL as messages, logs and attributes may show it: no credential."""
        return redact(self.url, dict(self.storage_options))

    def redact(self, text: str) -> str:
        """``text`` without this store's credentials (nor the environment's)."""
        return redact(text, dict(self.storage_options))

    @contextlib.contextmanager
    def reaching(self, doing: str = "reach") -> Iterator[None]:
        """Turn the errors of an object store that cannot be reached (refused
        credentials, no such bucket or endpoint) into one :class:`StoreError` line
        that names the fix and holds no credential.

        Raises
        ------
        StoreError
            Saying what failed, why (redacted) and :data:`REACH_FIX`.
        """
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            if "://" not in self.url or not _unreachable(exc):
                raise
            reason = self.redact(one_line(exc))
            # Not chained: the backend's exception may hold a credential (reason is redacted).
            raise StoreError(
                f"cannot {doing} the store {self.shown!r} ({reason}); {REACH_FIX}"
            ) from None

    def bucket_missing(self) -> bool:
        """Whether the store's URL names a bucket (or container) that does not exist:
        no store can be made there. False for a path, or where there are no buckets."""
        if "://" not in self.url:
            return False
        fs, path = self.filesystem()
        split = getattr(fs, "split_path", None)  # s3fs, gcsfs, adlfs: (bucket, key, ...)
        if split is None:
            return False
        bucket = split(path)[0]
        with self.reaching("reach the bucket of"):
            return bool(bucket) and not fs.exists(bucket)

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
            with self.reaching("open"):
                return zarr.open_group(self.url, mode=mode, **self.options())
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            if self.bucket_missing():
                raise StoreError(
                    f"no Zarr store at {self.shown!r}: its bucket does not exist; {REACH_FIX}"
                ) from None
            raise StoreError(
                f"no Zarr store at {self.shown!r}; make one with daskmri.build(root, store)"
            ) from None

    def array(self, name: str, mode: str = "r+"):
        with self.reaching("open"):
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
            reason = self.redact(" ".join(str(exc).split()))  # not chained: see reaching()
            raise StoreError(
                f"cannot open the store {self.shown!r}: {reason}; check the URL, and install "
                "the fsspec backend for its protocol (s3fs for s3://, gcsfs for gs://, ...)"
            ) from None


def at_once(
    spec: StoreSpec, work: dict[str, Callable[[Any], Awaitable[Any]]], *, mode: str = "r+"
) -> dict[str, Any]:
    """Open the arrays named in ``work`` concurrently (zarr's async API) and await
    ``work[name](array)`` on each, all together; returns the results by name. On an
    object store each open and each read or write is a round trip: one after another,
    the client's metadata work of a build cost hundreds of them.

    Examples
    --------
    >>> import tempfile
    >>> spec = StoreSpec.of(tempfile.mkdtemp() + "/s.zarr")
    >>> _ = zarr.create_array(spec.url, shape=(3,), dtype="int8", fill_value=7)
    >>> at_once(spec, {"": lambda a: a.getitem(slice(None))})[""].tolist()
    [7, 7, 7]
    """
    import asyncio

    import zarr.api.asynchronous as za
    from zarr.core.sync import sync

    async def one(name: str):
        opened = await za.open_array(
            store=spec.url, path=name, mode=mode, zarr_format=3, **spec.options()
        )
        return await work[name](opened)

    async def every():
        return await asyncio.gather(*(one(name) for name in work))

    return dict(zip(work, sync(every()), strict=True))


def writer(region: slice, values, *, write_empty: bool = False):
    """An :func:`at_once` job that writes ``values`` into ``region`` of its array;
    with ``write_empty``, also chunks that hold only the fill value (zarr would scan
    each chunk first to skip them)."""

    async def write(array) -> None:
        target = array.with_config({"write_empty_chunks": True}) if write_empty else array
        await target.setitem(region, values)

    return write


def what_is_there(spec: StoreSpec) -> str:
    """What the store's path holds: ``"absent"``, ``"empty"`` (a folder with
    nothing in it), ``"daskmri"`` (a store daskmri made, of any format), ``"file"``,
    ``"zarr"`` (a Zarr node daskmri did not make) or ``"other"`` (a folder of other
    things). Reads one small metadata object at most."""
    fs, path = spec.filesystem()
    with spec.reaching("reach"):
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
    if any(c in spec.url for c in "*?["):
        # fsspec reads these as wildcards when it deletes (overwrite, a shrinking
        # resize): a store "ds[12].zarr" would delete ds1.zarr and ds2.zarr.
        raise StoreError(
            f"the store path {spec.shown!r} holds a wildcard character (*, ? or [); "
            "daskmri writes only to store paths without them: rename it"
        )
    if root is not None:
        fs, path = spec.filesystem()
        local = getattr(fs, "local_file", False)  # a path, file://, local://, ...
        refuse_inside_dataset(path if local else spec.url, root, what="the store path")
    there = what_is_there(spec)
    if there == "absent" and spec.bucket_missing():
        raise StoreError(
            f"cannot make a store at {spec.shown!r}: its bucket does not exist; {REACH_FIX}"
        )
    fix = "pass a path that does not exist yet (or an empty folder) for the store"
    if there == "file":
        raise StoreError(f"{spec.shown!r} is a file, not a daskmri store; {fix}")
    if there == "zarr":
        raise StoreError(
            f"{spec.shown!r} is a Zarr store that daskmri did not make, and daskmri never "
            f"overwrites what it did not make (not even with mode='overwrite'); {fix}"
        )
    if there == "other":
        fs, path = spec.filesystem()
        names = sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise StoreError(
            f"{spec.shown!r} holds files that daskmri did not make ({shown}), and daskmri "
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


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says an object store cannot be reached: access refused, or
    any error of the store's client library (no endpoint, no connection, ...)."""
    # Not any ConnectionError or TimeoutError: a lost cluster raises those too.
    if isinstance(exc, PermissionError):
        return True
    return type(exc).__module__.split(".")[0] in _CLIENT_PACKAGES


def _inside(path: str, folder: str) -> bool:
    if "://" in path:  # commonpath would fold the // of a URL
        return path.startswith(folder.rstrip("/") + "/")
    return path != folder and os.path.commonpath([path, folder]) == folder
