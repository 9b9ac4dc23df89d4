"""Plug-in registries: classes by name, from a package's built-ins and an entry-point group.

Scorers (``scorers.SCORERS``, group ``dataselect.scorers``) and attribution methods
(``attribution.ATTRIBUTIONS``, group ``dataselect.attribution``) register the same way: a
package outside this repository adds one with one module and one line of packaging
metadata. Classes are imported when first looked up, not when a registry is built: listing
the names costs nothing, and a job imports only the class it runs. The built-ins are also
listed in the code, so a source checkout whose packaging metadata is not installed still
finds them; an installed plug-in cannot take a built-in's name, and a name two installed
distributions register is refused, naming both, when it is used.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from importlib import import_module
from typing import Any, Generic, TypeVar

from dataselect.errors import InputError

T = TypeVar("T")


class Registry(Mapping[str, "type[T]"], Generic[T]):
    """Classes by name, from ``builtin`` (``name -> "module:Class"``) and the entry points
    of ``group``, each imported and checked by ``load(name, target)`` on first lookup, and
    then by :func:`check_concrete`; its errors call a class ``what`` (``scorer``) and blame
    setting ``field``."""

    def __init__(self, group: str, builtin: Mapping[str, str],
                 load: Callable[[str, str], type[T]], what: str = "plug-in",
                 field: str | None = None) -> None:
        self.group = group
        self.builtin = builtin
        self._load = load
        self.what = what
        self.field = field
        self._targets: dict[str, str] | None = None
        # plug-in name -> every (distribution, target) registering it
        self._claims: dict[str, list[tuple[str, str]]] = {}
        self._classes: dict[str, type[T]] = {}

    def refresh(self) -> None:
        """Look for entry points again (after installing a plug-in in this process)."""
        self._targets = None
        self._classes = {}

    def names(self) -> RegistryNames:
        """The registered names, as argparse ``choices``: nothing is looked up until a
        name is checked or listed."""
        return RegistryNames(self)

    def _entries(self) -> dict[str, str]:
        if self._targets is None:
            from importlib import metadata  # tens of ms: only when a name is looked up

            claims: dict[str, list[tuple[str, str]]] = {}  # name -> (distribution, target)
            for entry in metadata.entry_points(group=self.group):
                if self.builtin.get(entry.name) == entry.value:
                    continue  # dataselect's own registration of a built-in
                # a plug-in's, a built-in's name included: it is refused when that name
                # is used (:meth:`_check_unambiguous`), where it was dropped without a word
                # and the built-in ran (pass 20, g05)
                claim = (entry.dist.name if entry.dist is not None else "?", entry.value)
                if claim not in claims.setdefault(entry.name, []):
                    claims[entry.name].append(claim)
            self._claims = claims
            self._targets = {**self.builtin, **{name: found[0][1]
                                                for name, found in claims.items()
                                                if name not in self.builtin}}
        return self._targets

    def _check_unambiguous(self, name: str) -> None:
        """Refuse a name registered twice, by two installed distributions (or twice by one,
        to two classes): which one is taken would depend on the order of ``sys.path``, and
        a job would silently run the other package's code after a reinstall. Said when the
        name is used (and listed), so the other names still work."""
        found = self._claims.get(name, [])
        if name in self.builtin and found:
            others = " and ".join(f"{dist} ({target})" for dist, target in sorted(found))
            raise InputError(f"{name!r} is a built-in {self.what}, and {others} registers "
                             f"that name too in the entry-point group {self.group}: give its "
                             "entry point another name, or uninstall it")
        if len(found) > 1:
            both = " and ".join(f"{dist} ({target})" for dist, target in sorted(found))
            raise InputError(f"{name!r} is registered more than once in the entry-point "
                             f"group {self.group}: by {both}; uninstall all but one of "
                             "them, or give their entry points other names")

    def order(self, names: Collection[str]) -> list[str]:
        """The order names are listed in: sorted."""
        return sorted(names)

    def __getitem__(self, name: str) -> type[T]:
        if name not in self._classes:
            target = self._entries()[name]
            self._check_unambiguous(name)
            cls = self._load(name, target)
            check_concrete(self.what, name, target, cls, self.field)
            self._classes[name] = cls
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.order(self._entries()))

    def __len__(self) -> int:
        return len(self._entries())


class RegistryNames(Collection[str]):
    """A registry's names, in its order. ``in`` checks a name without importing its class
    (the registry's own ``in``, a Mapping's, imports it), and neither the entry points nor
    the classes are read before the first check: ``dataselect --help`` builds a parser with
    these as choices and never consults them."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def __contains__(self, name: object) -> bool:
        return name in self._registry._entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry)

    def __len__(self) -> int:
        return len(self._registry)


def import_class(what: str, name: str, target: str, field: str) -> Any:
    """The object ``target`` (``module:attribute``) names, registered as ``what`` ``name``;
    one :class:`InputError` line (``field``) when it cannot be imported or its module fails
    while importing (a plug-in's fault, said to be so)."""
    module, _, attr = target.partition(":")
    try:
        return getattr(import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"{what} {name!r} is registered as {target!r}, which cannot be "
                         f"imported ({exc}); reinstall the package that provides it",
                         field=field) from None
    except (Exception, SystemExit) as exc:  # the plug-in's module failed while importing
        raise InputError(f"{what} {name!r} ({target}) failed while its module was imported "
                         f"({type(exc).__name__}: {exc}); the fault is in the plug-in: tell "
                         "its author, or uninstall it", field=field) from None


def check_own_name(what: str, name: str, target: str, cls: type, field: str) -> None:
    """A registered class calls itself by its registered name (``cls.name``): a job and
    its records name it by that attribute."""
    if getattr(cls, "name", None) != name:
        raise InputError(f"{what} {name!r} ({target}) calls itself "
                         f"{getattr(cls, 'name', None)!r}; its class attribute name must "
                         "equal its registered name", field=field)


def check_concrete(what: str, name: str, target: str, cls: type, field: str | None) -> None:
    """A registered class defines every method its base class leaves abstract: Python
    refuses to build one that does not, and the job would end in a ``TypeError``
    traceback when it builds the class, after reading its inputs."""
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        methods = ", ".join(f"{method}()" for method in missing)
        raise InputError(f"{what} {name!r} ({target}) does not define {methods}, which "
                         "its base class leaves abstract, so it cannot be built; the fault "
                         "is in the plug-in: tell its author, or uninstall it", field=field)
