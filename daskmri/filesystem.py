"""Where a dataset's files live: this machine's disk, or any filesystem that fsspec
opens (``s3://``, ``gs://``, ``az://``, ...). :class:`FileSystem` is what the scan
lists, what the fingerprints stat and what the readers read through; a chunk task
fetches all its files at once (:meth:`FileSystem.prefetch`), because on an object
store the latency of each request, not the bandwidth, is what costs.

Local paths stay on ``os`` calls (a million-file scan depends on it); fsspec is
imported only for a URL.
"""

from __future__ import annotations

import asyncio
import errno
import os
import posixpath
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import LayoutError, MissingExtraError, redact

__all__ = ["LOCAL", "Entry", "FileSystem", "TooLarge", "split_root"]

#: Bytes a prefetch asks for per object: enough for any slice or contour file (a
#: 1024x1024 float32 slice is 4 MiB), while a chunk of 64 hostile objects of any size
#: holds at most 64 times this. A larger object is read again alone, its size checked
#: against ``Limits.max_file_bytes`` before it is read.
PREFETCH_BYTES = 8 * 2**20

_BACKENDS = {"s3": "s3fs (pip install 'daskmri[s3]')", "gs": "gcsfs", "gcs": "gcsfs"}


class TooLarge(OSError):
    """A file over the byte limit; ``size`` is its size, or None when only a bound
    is known (an object fetched up to the limit)."""

    def __init__(self, size: int | None) -> None:
        super().__init__(size)
        self.size = size


class Entry(NamedTuple):
    """What a folder on a store holds, one entry: as :class:`os.DirEntry` answers
    (``name``, ``path``, ``is_dir()``, ``is_symlink()``), so that one walker reads
    both; a store has no links."""

    name: str
    path: str
    folder: bool

    def is_dir(self) -> bool:
        return self.folder

    def is_symlink(self) -> bool:
        return False


@dataclass(frozen=True)
class FileSystem:
    """The filesystem a dataset's paths are on: local (``protocol=""``) or an
    fsspec protocol with its options (credentials, endpoint; never shown in a repr).
    Small and picklable, so records carry it to the workers. ``blobs`` holds a
    chunk's files once fetched (:meth:`prefetch`).

    Examples
    --------
    >>> LOCAL.local, FileSystem("s3", (("anon", True),))
    (True, FileSystem(protocol='s3'))
    """

    protocol: str = ""
    options: tuple[tuple[str, Any], ...] = field(default=(), repr=False)
    blobs: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    listings: Mapping[str, list] | None = field(default=None, repr=False, compare=False)

    @property
    def local(self) -> bool:
        return not self.protocol

    def fsspec(self):
        """The fsspec filesystem (fsspec caches one instance per protocol and options).

        Raises
        ------
        MissingExtraError
            If the backend for the protocol is not installed.
        """
        import fsspec

        try:
            return fsspec.filesystem(self.protocol, **dict(self.options))
        except ImportError as exc:  # chained: the backend may be there but broken
            backend = _BACKENDS.get(self.protocol, f"the fsspec backend for {self.protocol}://")
            raise MissingExtraError(f"{self.protocol}:// needs {backend}") from exc

    def url(self, path: str) -> str:
        """``path`` as fsspec lists it, with the protocol (what records carry)."""
        return path if "://" in path else f"{self.protocol}://{path}"

    def key(self, url: str) -> str:
        """``url`` as fsspec's calls take it (without the protocol)."""
        return url.split("://", 1)[1] if "://" in url else url

    def read(self, path: str, max_bytes: int) -> bytes:
        """The bytes of the file ``path``.

        Raises
        ------
        FileNotFoundError, IsADirectoryError, PermissionError, OSError
            As the filesystem raises them.
        TooLarge
            If the file holds more than ``max_bytes``, before it is read whole.
        """
        if self.local:
            return _read_local(path, max_bytes)
        if self.blobs is not None and path in self.blobs:
            data = self.blobs[path]
            if len(data) < PREFETCH_BYTES:  # the whole object
                if len(data) > max_bytes:
                    raise TooLarge(len(data))
                return data
            if max_bytes < PREFETCH_BYTES:  # over the limit: known without reading it all
                raise TooLarge(None)
            # Cut short by the prefetch, and allowed: read below, whole.
        return self._read_remote(path, max_bytes)

    def head(self, path: str, n: int) -> bytes:
        """The first ``n`` bytes of the file ``path`` (fewer if it is shorter): a
        header, without reading the rest.

        Raises
        ------
        FileNotFoundError, IsADirectoryError, OSError
            As :meth:`read`.
        """
        if not self.local:
            info = self.fsspec().info(self.key(path))
            if info.get("type") == "directory":
                raise IsADirectoryError(path)
            return self.fsspec().cat_file(self.key(path), start=0, end=n)
        _regular(os.stat(path), path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        with open(fd, "rb") as fh:
            _regular(os.fstat(fd), path)
            return fh.read(n)

    def _read_remote(self, path: str, max_bytes: int) -> bytes:
        fs, key = self.fsspec(), self.key(path)
        info = fs.info(key)
        if info.get("type") == "directory":
            raise IsADirectoryError(path)
        if info.get("size") is not None and info["size"] > max_bytes:
            raise TooLarge(info["size"])
        return fs.cat_file(key)

    def prefetch(self, paths: Iterable[str]) -> FileSystem:
        """This filesystem holding the given files' bytes (or, per file, the error
        reading it), fetched concurrently in one call: each object up to
        :data:`PREFETCH_BYTES`. Local: itself, unchanged (the page cache does this)."""
        wanted = sorted({p for p in paths if p is not None})
        if self.local or not wanted:
            return self
        keys = [self.key(p) for p in wanted]
        # One call: an async filesystem (s3fs, gcsfs, ...) runs the requests together.
        # cat_ranges, not cat: cat would expand a name with [ or * in it as a glob.
        found = self.fsspec().cat_ranges(
            keys, [0] * len(keys), [PREFETCH_BYTES] * len(keys), on_error="return"
        )
        blobs = {}
        for path, data in zip(wanted, found, strict=True):
            # An error here (an empty object that a range request refuses, a "folder"):
            # left out, so that read() asks again and reports it in its own words.
            if isinstance(data, bytes | bytearray):
                blobs[path] = bytes(data)
        return FileSystem(self.protocol, self.options, blobs, self.listings)

    def absolute(self, path: str | os.PathLike[str]) -> str:
        """``path`` as records name it: absolute on this machine, a URL as it is."""
        return os.path.abspath(path) if self.local else os.fspath(path)

    def join(self, folder: str, name: str) -> str:
        """``name`` inside ``folder`` (a store's separator is always ``/``)."""
        return os.path.join(folder, name) if self.local else posixpath.join(folder, name)

    def real(self, path: str) -> str:
        """``path`` with every link resolved (a store has none: unchanged)."""
        return os.path.realpath(path) if self.local else path

    def inside(self, path: str, root_real: str) -> bool:
        """Whether ``path``, links resolved, is ``root_real`` (a :meth:`real` path)
        or lies under it.

        Examples
        --------
        >>> FileSystem("s3").inside("s3://b/data/x", "s3://b/data"), LOCAL.inside("/", "/tmp")
        (True, False)
        """
        real, sep = (os.path.realpath(path), os.sep) if self.local else (path, "/")
        return real == root_real or real.startswith(root_real.rstrip(sep) + sep)

    def entries(self, folder: str) -> list[os.DirEntry | Entry]:
        """What ``folder`` holds, sorted by name; empty when there is no such folder.
        Local: :func:`os.scandir`'s entries as they are (a million-file scan depends
        on their cached types); a store: :class:`Entry` values, from the listing
        :meth:`listed` made when there is one."""
        if self.local:
            try:
                with os.scandir(folder) as found:
                    return sorted(found, key=_name)
            except OSError:
                return []
        if self.listings is not None and folder in self.listings:
            return self.listings[folder]
        try:
            listed = self.fsspec().ls(self.key(folder), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return self._entries(listed)

    def _entries(self, listed: list[dict]) -> list[Entry]:
        found = []
        for info in listed:
            name = info["name"].rstrip("/")
            folder = info["type"] == "directory"
            found.append(Entry(name.rsplit("/", 1)[-1], self.url(name), folder))
        return sorted(found)

    def listed(self, folders: Iterable[str]) -> FileSystem:
        """This filesystem holding the listings of ``folders``, made concurrently
        (an async filesystem such as s3fs); a folder that fails to list is left out,
        so that :meth:`entries` asks again and raises its error. Local: itself (a
        local listing costs no round trip)."""
        wanted = sorted(set(folders))
        if self.local or not wanted:
            return self
        fs = self.fsspec()
        if not getattr(fs, "async_impl", False):
            return self
        from fsspec.asyn import sync

        async def gather():
            calls = [fs._ls(self.key(folder), detail=True) for folder in wanted]
            return await asyncio.gather(*calls, return_exceptions=True)

        listings = {}
        for folder, listed in zip(wanted, sync(fs.loop, gather), strict=True):
            if isinstance(listed, FileNotFoundError | NotADirectoryError):
                listings[folder] = []
            elif not isinstance(listed, BaseException):
                listings[folder] = self._entries(listed)
        return FileSystem(self.protocol, self.options, self.blobs, listings)

    def is_folder(self, path: str) -> bool:
        """Whether ``path`` is a folder (on a store: a prefix that holds objects)."""
        if self.local:
            return os.path.isdir(path)
        return bool(self.fsspec().isdir(self.key(path)))

    def stat(self, path: str) -> str | None:
        """What identifies this version of the file: size and modification time
        (local), size and ETag or modification time (a store); None when missing.
        A store answers from the listing the scan just made."""
        if self.local:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return f"{st.st_size}:{st.st_mtime_ns}"
        try:
            info = self.fsspec().info(self.key(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        version = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        return f"{info.get('size')}:{str(version).strip(chr(34))}"

    def forget_listings(self, root: str) -> None:
        """Drop fsspec's cached listings under ``root``, so that a new scan sees
        objects written since the last one."""
        if self.local:
            return
        fs, key = self.fsspec(), self.key(root).rstrip("/")
        # invalidate_cache(path) drops the path and its parents, not what lies below.
        for listed in [k for k in fs.dircache if k == key or k.startswith(key + "/")]:
            fs.dircache.pop(listed, None)
        fs.invalidate_cache(key)


LOCAL = FileSystem()


def _name(entry: os.DirEntry) -> str:
    return entry.name


def _read_local(path: str, max_bytes: int) -> bytes:
    # Only a regular file is opened: opening a FIFO named like a slice waits for a
    # writer for ever, and opening some devices acts on them. The stat of the open file
    # checks again (the path may have changed in between); O_NONBLOCK and O_NOCTTY keep
    # that open harmless.
    _regular(os.stat(path), path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        _regular(info, path)
        if info.st_size > max_bytes:
            raise TooLarge(info.st_size)
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as fh:
        # Sized by the stat above: read(n) would allocate n bytes up front.
        return fh.read(info.st_size + 1)


def _regular(info: os.stat_result, path: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", path)


def split_root(root: str | os.PathLike[str], options: dict | None = None) -> tuple[FileSystem, str]:
    """The filesystem of a dataset root and the root as records name it: an absolute
    local path, or the URL without a trailing ``/``.

    Raises
    ------
    LayoutError
        If the URL carries credentials (pass them in ``source_options=``), or
        ``options`` are given for a local folder.
    MissingExtraError
        If the protocol's fsspec backend is not installed.

    Examples
    --------
    >>> split_root("s3://bucket/data/")[1]
    's3://bucket/data'
    >>> split_root("s3://me:pw@bucket/data")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.LayoutError: the dataset URL holds credentials; ...
    """
    text = os.fspath(root)
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    if "://" not in text:
        if options:
            raise LayoutError(
                "source_options= is for a dataset at a URL (s3://..., gs://...); "
                f"{text!r} is a local folder, so pass no source_options"
            )
        return LOCAL, os.path.abspath(text)
    if redact(text) != text:  # user:password@, or ?X-Amz-Signature=... and the like
        # Not echoed: the URL is the secret.
        raise LayoutError(
            "the dataset URL holds credentials; pass them in source_options= "
            "(or the environment) and give the URL without them"
        )
    files = FileSystem(text.split("://", 1)[0], tuple(sorted((options or {}).items())))
    files.fsspec()  # a missing backend fails here, once, in one line
    return files, text.rstrip("/")
