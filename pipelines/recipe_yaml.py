"""The recipe file read with limits, so a hostile or broken recipe fails at once: at most
1 MiB, at most 100 aliases, and at most a few MiB of data once every alias is expanded (a
"billion laughs" recipe of a few lines would otherwise expand to gigabytes while an error
message renders it). Duplicate keys (two merge keys ``<<`` among them) and YAML 1.1's
octal and sexagesimal integers are refused, and merges are resolved as YAML says (PyYAML's
own rule depended on the key's length); what the file means is :mod:`pipelines.recipe`'s
to check."""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from dataselect import checks
from pipelines.recipe_errors import RecipeError

MAX_RECIPE_BYTES = 1 << 20
MAX_ALIASES = 100
# nodes plus scalar characters once every alias is expanded: what validating the recipe
# and rendering its errors may have to walk
MAX_EXPANDED_SIZE = 4 * MAX_RECIPE_BYTES


def read_recipe_yaml(path: str | os.PathLike, where: str) -> Any:
    """The recipe file's YAML document (``where``: its name in errors)."""
    return _parse_yaml(_read_limited(path), where)


def _read_limited(path: str | os.PathLike) -> str:
    """The recipe's text, refused past ``MAX_RECIPE_BYTES`` (read with a cap, so a FIFO or
    a device file cannot make it read forever)."""
    checks.check_regular_file(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError("recipe file not found", where=str(path)) from None
    except IsADirectoryError:
        raise RecipeError("recipe is a folder, not a YAML file", where=str(path)) from None
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe file is larger than {MAX_RECIPE_BYTES // 2**20} MiB; a "
                          "recipe is settings, not data", where=str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"not UTF-8 text (byte {exc.start})", where=str(path)) from None


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader: builds no objects
    except (_YamlLimit, _DuplicateKey) as exc:
        raise RecipeError(exc.problem, where=f"{where}:{exc.problem_mark.line + 1}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        place = f"{where}:{mark.line + 1}" if mark is not None else where
        raise RecipeError(f"not valid YAML: {problem}", where=place) from None
    except RecursionError:
        raise RecipeError("YAML nested too deeply", where=where) from None


class _YamlLimit(yaml.composer.ComposerError):
    """A recipe over one of the loader's limits (its message is not "not valid YAML")."""


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping, or an integer YAML 1.1 reads other than written
    (its message is not "not valid YAML" either)."""


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with limits on aliases. Aliases share one node, so building a
    "billion laughs" document is cheap; what explodes is everything that walks it later
    (validation, an error message that renders the value). So aliases are counted while
    composing, and the composed document's expanded size is measured, with every node
    counted once however many aliases point at it, before anything walks it."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.aliases_seen = 0
        self._flattened: dict[int, yaml.MappingNode] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen += 1
            if self.aliases_seen > MAX_ALIASES:
                raise _YamlLimit(None, None, f"more than {MAX_ALIASES} YAML aliases (*name); "
                                 "a recipe needs few", self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """Check a mapping's keys, then fold its merges (``<<``) into it, as YAML says: the
        mapping's own keys win over merged ones, and of the maps one merge lists
        (``<<: [*a, *b]``) the first that has a key wins. PyYAML's own folding compares
        keys by the identity of their text, so which value won depended on the key's length
        (``k`` kept the first map's value, ``num_buckets`` the last's), and a merged map
        that itself merged and overrode a key gave the overridden value. Keys are compared
        as values here, and every mapping comes out with each key once.

        PyYAML calls this for every mapping it builds, and this calls it for every mapping
        reached through a merge (a merged anchor that merges again, a map in a merge's
        list), so a mapping that is only ever merged is checked too. Each mapping is
        checked and folded once: folding rewrites it, and an alias of it met later must not
        see its merged keys as repeats."""
        if id(node) in self._flattened:
            return
        self._flattened[id(node)] = node  # kept alive, so the id is not reused
        _check_keys(self, node)
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        own: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                if key_node.tag == "tag:yaml.org,2002:value":  # as PyYAML does
                    key_node.tag = "tag:yaml.org,2002:str"
                own.append((key_node, value_node))
                continue
            maps = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for merged_map in maps:
                if not isinstance(merged_map, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark, "expected a mapping "
                        f"or a list of mappings for merging, but found {merged_map.id}",
                        merged_map.start_mark)
                self.flatten_mapping(merged_map)
                merged.extend(merged_map.value)
        if len(own) == len(node.value):
            return
        taken = {key for key in (self._hashable_key(k) for k, _ in own) if key is not None}
        kept = []
        for key_node, value_node in merged:
            key = self._hashable_key(key_node)
            if key is not None:
                if key in taken:
                    continue
                taken.add(key)
            kept.append((key_node, value_node))
        node.value = kept + own

    def _hashable_key(self, key_node: yaml.Node) -> Any:
        """The key's value as a dict compares it (``None`` for an unhashable key, which
        PyYAML's own error names when the mapping is built)."""
        key = self.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            return None
        return (key,)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """Decimal integers only. YAML 1.1 reads ``seed: 017`` as octal 15, ``0x10`` as 16
        and ``1:30`` as 90: a setting silently other than the one written."""
        text = str(node.value).replace("_", "")
        if not re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", text):
            raise _DuplicateKey(None, None, f"{node.value!r} is not a decimal integer (YAML "
                                f"1.1 would read it as {super().construct_yaml_int(node)}); "
                                "write the number in decimal, or quote it to give text",
                                node.start_mark)
        return int(text)

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_SIZE:
            raise _YamlLimit(None, None, f"its aliases expand to more than "
                             f"{MAX_EXPANDED_SIZE // 2**20} MiB of data", node.start_mark)
        return node


_MERGE = "tag:yaml.org,2002:merge"


def _check_keys(loader: _RecipeLoader, node: yaml.MappingNode) -> None:
    """Refuse a mapping that gives a key twice. PyYAML keeps the last value silently, so
    two tasks of one name, or a second ``selection:`` further down, would run a recipe
    other than the one its author reads. Keys are compared as values (``1`` and ``1.0`` are
    one key, as in the dict they become). Two merge keys (``<<``) in one mapping are a
    repeated key too: YAML 1.1 allows one, and PyYAML would let the first win although the
    last is written lower down. A key given both in the mapping and through its merge is
    fine: the mapping's own key wins, as YAML says (that is what merges are for)."""
    seen: dict[Any, int] = {}
    merge_line = None
    for key_node, _ in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == _MERGE:
            if merge_line is not None:
                raise _DuplicateKey(None, None, f"merge key << appears twice in one mapping "
                                    f"(first on line {merge_line}); YAML allows one: give "
                                    "one merge a list, <<: [*first, *second] (where the "
                                    "first map that has a key wins)", key_node.start_mark)
            merge_line = line
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: PyYAML's own error names it
            continue
        seen[key] = line
        if first is not None:
            raise _DuplicateKey(None, None, f"key {checks.shown(key)} appears twice in "
                                f"one mapping (first on line {first}); YAML would keep "
                                "only the last: remove or rename one", key_node.start_mark)


_RecipeLoader.add_constructor("tag:yaml.org,2002:int", _RecipeLoader.construct_yaml_int)
# YAML 1.1 (PyYAML) reads 1e-3 as a string, since its floats need a dot; recipes read it as
# the number anyone writing a learning rate means (YAML 1.2 does too)
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes plus scalar characters of ``node`` with its aliases expanded, each distinct
    node measured once (``sizes``), so the walk is linear in the file, not the expansion.
    A node met again while it is being measured is a recursive alias: infinite."""
    known = sizes.get(id(node))
    if known is not None:
        if known < 0:
            raise _YamlLimit(None, None, "a recursive YAML alias (a node that contains "
                             "itself)", node.start_mark)
        return known
    sizes[id(node)] = -1
    if isinstance(node, yaml.ScalarNode):
        size = 1 + len(node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    else:
        size = 1 + sum(_expanded_size(key, sizes) + _expanded_size(value, sizes)
                       for key, value in node.value)
    sizes[id(node)] = min(size, MAX_EXPANDED_SIZE + 1)
    return sizes[id(node)]
