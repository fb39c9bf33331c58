"""The checks every layout's names and patterns pass, in one place: a kind's name
(a variable of the dataset), a glob that stays inside the root, a regex that compiles."""

from __future__ import annotations

import os
import re

from ..errors import LayoutError
from ..record import RESERVED

__all__ = ["NAME", "check_contains", "check_glob", "check_kind_name", "compile_pattern"]

#: A dataset variable's name.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def check_glob(owner: str, value: str, keys: tuple[str, ...]) -> None:
    """Raise LayoutError unless ``value`` names one of ``keys`` and stays inside the root.

    Examples
    --------
    >>> check_glob("Layout.dicom_glob", "../x/{patient_id}", ("patient_id",))
    Traceback (most recent call last):
    ...
    daskmri.errors.LayoutError: Layout.dicom_glob='../x/{patient_id}' must stay inside the root
    """
    if not any("{" + key + "}" in value for key in keys):
        wanted = " or ".join(f"'{{{key}}}'" for key in keys)
        raise LayoutError(f"{owner}={value!r} must contain {wanted}")
    if os.path.isabs(value) or ".." in value.split("/"):
        raise LayoutError(f"{owner}={value!r} must stay inside the root")


def compile_pattern(owner: str, value: str, *, group: str | None = "instance") -> re.Pattern[str]:
    """``value`` compiled (ignoring case when no ``group`` is wanted), or LayoutError."""
    try:
        compiled = re.compile(value, 0 if group else re.IGNORECASE)
    except re.error as exc:
        raise LayoutError(f"{owner}={value!r} is not a valid regex: {exc}") from None
    if group and group not in compiled.groupindex:
        raise LayoutError(f"{owner}={value!r} needs a named group (?P<{group}>...)")
    return compiled


def check_kind_name(name: object) -> None:
    """Raise LayoutError unless ``name`` can be a mask variable of the dataset.

    Examples
    --------
    >>> check_kind_name("lv")
    >>> check_kind_name("x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.LayoutError: kind name 'x' is reserved or not a variable name ...
    """
    if (
        not isinstance(name, str)
        or not NAME.fullmatch(name)
        or name in RESERVED
        or name.startswith("has_")
    ):
        raise LayoutError(
            f"kind name {name!r} is reserved or not a variable name (a letter, then "
            "letters, digits or _; not has_... nor one of the dataset's other names: "
            f"{', '.join(sorted(RESERVED))}); rename the kind, e.g. '{name}_mask'"
        )


def check_contains(contains: object, kinds: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``contains`` as a tuple of ``(inner, outer)`` kind pairs, or LayoutError.

    A JSON round trip turns the pairs into lists, so any sequence of two names is taken.

    Raises
    ------
    LayoutError
        If an entry is not two different names of ``kinds``.

    Examples
    --------
    >>> check_contains([["lv", "myo"]], ("lv", "myo", "rv"))
    (('lv', 'myo'),)
    >>> check_contains([("lv", "la")], ("lv", "myo"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    daskmri.errors.LayoutError: contains=... names a kind this layout lacks: ('lv', 'la') ...
    """
    if isinstance(contains, (str, bytes)):
        raise LayoutError(f"contains={contains!r} must be pairs (inner, outer), not a string")
    pairs = []
    for pair in contains:
        pair = tuple(pair) if not isinstance(pair, (str, bytes)) else (pair,)
        if len(pair) != 2 or pair[0] == pair[1] or not all(isinstance(n, str) for n in pair):
            raise LayoutError(f"contains={contains!r}: {pair!r} is not a pair of two kinds")
        if not set(pair) <= set(kinds):
            raise LayoutError(
                f"contains={contains!r} names a kind this layout lacks: {pair!r} (its kinds "
                f"are {kinds}); pass contains=() for a layout without those kinds"
            )
        pairs.append(pair)
    return tuple(pairs)
