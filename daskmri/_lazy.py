"""Lazy package attributes (PEP 562): a package's public names resolve on first use,
so that importing one of its modules (as a worker process does, to unpickle a task)
does not import the whole package."""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict, exports: dict[str, tuple[str, ...]]
) -> tuple[Callable, Callable, list[str]]:
    """The ``__getattr__`` and ``__dir__`` of the package whose globals are
    ``namespace``, and the names they serve (for its ``__all__``). ``exports`` maps
    each module to the public names it holds; a name that is its module's own last
    part is the module itself.

    Examples
    --------
    >>> exports = {"math": ("sqrt",), "json": ("json",)}
    >>> getattr_, dir_, names = lazy_exports({"__name__": "p"}, exports)
    >>> getattr_("sqrt")(4.0), getattr_("json").__name__, names
    (2.0, 'json', ['json', 'sqrt'])
    """
    package = namespace["__name__"]
    exports = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = importlib.import_module(module)
        if module.rpartition(".")[2] != name:
            value = getattr(value, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace.get("__all__", ()), *exports})

    return __getattr__, __dir__, sorted(exports)
