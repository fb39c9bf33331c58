"""The one walker of a dataset's files: a relative glob matched under a root, on the
local disk or on a store alike (:class:`daskmri.filesystem.FileSystem` hides the
difference), never leaving the root.
"""

from __future__ import annotations

import fnmatch
import glob
import re

from ..filesystem import FileSystem
from ..record import Problem

__all__ = ["first_listing", "walk"]

FOLDER_LEAVES = "folder is a link that leaves the root; not followed"
FILE_LEAVES = "file is a link that leaves the root; not followed"


def walk(
    fs: FileSystem,
    root: str,
    pattern: str,
    problems: list[Problem],
    ids: dict,
    *,
    root_real: str | None = None,
) -> list[str]:
    """Paths under ``root`` matching the relative glob ``pattern``, sorted part by
    part, never leaving ``root``.

    A literal folder on the way is joined, not listed (a missing one lists as
    empty); each folder a wildcard part (or the last part) searches is listed once.
    A folder or file that is a link out of the root is reported in ``problems`` (a
    :class:`~daskmri.record.Problem` naming ``ids``), not followed: a folder is
    resolved once, a file only when it is a link, which keeps a million-file scan
    cheap. Matching entries that are not regular files (a folder named like a slice)
    are returned, so that the build drops their record with a reason.

    Parameters
    ----------
    fs : FileSystem
        Where ``root`` is.
    root : str
        The folder, as :meth:`FileSystem.absolute` gives it.
    pattern : str
        A glob relative to ``root``, parts separated by ``/``.
    problems : list of Problem
        Receives the links found leaving the root.
    ids : dict
        ``patient_id`` and ``original_id`` for the problems.
    root_real : str, optional
        ``fs.real(root)``, when the caller already has it.

    Returns
    -------
    list of str
        The matching paths.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from daskmri.filesystem import LOCAL
    >>> root = tempfile.mkdtemp()
    >>> for name in ("a/2.dcm", "a/1.dcm", "a/x.txt"):
    ...     path = pathlib.Path(root, name)
    ...     path.parent.mkdir(exist_ok=True)
    ...     _ = path.write_text("")
    >>> [p[len(root):] for p in walk(LOCAL, root, "a/*.dcm", [], {})]
    ['/a/1.dcm', '/a/2.dcm']
    """
    root_real = fs.real(root) if root_real is None else root_real
    parts = pattern.split("/")
    folders = [root]
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if not last and glob.escape(part) == part:
            folders = [fs.join(folder, part) for folder in folders]
            continue
        regex = re.compile(fnmatch.translate(part))
        found: list[str] = []
        for folder in folders:
            if not fs.inside(folder, root_real):
                problems.append(Problem(folder, FOLDER_LEAVES, **ids))
                continue
            for entry in fs.entries(folder):
                if not regex.match(entry.name):
                    continue
                if not last:
                    if entry.is_dir():
                        found.append(entry.path)
                elif entry.is_symlink() and not fs.inside(entry.path, root_real):
                    problems.append(Problem(entry.path, FILE_LEAVES, **ids))
                else:
                    found.append(entry.path)
        folders = found
    return folders


def first_listing(root: str, pattern: str) -> str:
    """The folder that :func:`walk` lists first for ``pattern``: the one that holds
    its first wildcard part (or its last part). A store's scan lists these for many
    patients at once (:meth:`FileSystem.listed`).

    Examples
    --------
    >>> first_listing("s3://b/data", "dicoms/P1/*/IM-*.dcm")
    's3://b/data/dicoms/P1'
    """
    parts = pattern.split("/")
    literal = next((k for k, part in enumerate(parts) if glob.escape(part) != part), len(parts) - 1)
    return "/".join([root, *parts[:literal]])
