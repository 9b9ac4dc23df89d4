"""A model folder's chat template, rendered as the untrusted input it is.

The template (``chat_template`` in tokenizer_config.json, or a .jinja file) is code that
came with the folder. transformers already renders it in jinja2's immutable sandbox, so it
cannot reach Python's internals; three things remain, all handled here, around
transformers' own rendering (so every real template renders byte-identically):

* a template that fails (``raise_exception('...')``, a syntax error, an undefined filter,
  a division by zero) is one line naming the model folder, not a jinja2 traceback from a
  worker;
* a template that runs without end (``{% for i in range(10**5) %}{% for j in
  range(10**5) %}``) is stopped after a step budget, counted in the template's own lines
  (``sys.settrace`` on the frames jinja2 compiled the template into), and refused; so is
  one that writes far more text than the conversation holds (it would fill memory
  first). The budgets grow with the conversation, so a template that walks its messages
  more than once still renders a long chat; real templates take tens of steps per
  message;
* one expression that would build a huge value at once (``'x' * 10**10``,
  ``'x'.center(10**10)``, ``10 ** (10**10)``, ``'x' | indent(10**10)``, ``lipsum(10**8)``)
  is a single step and writes nothing, so neither budget sees it: the template is
  compiled by a subclass of jinja2's immutable sandbox (``BoundedSandboxedEnvironment``,
  made for transformers by :func:`_install`) that sizes each such value from its operands
  before building it and refuses one larger than the rendering may write. Every
  operator, method, filter and global that can build a value much larger than its inputs
  is checked, and so are ``+`` and ``~``, whose doubling in a short loop is as bad.

Everything refused is one line naming the model folder. (What is not checked: a value
made of pieces the template holds, ``[s, s, s]`` or ``s | list``, is at most the template's
length times the limit, and the output budget refuses it once written.)
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import string
import sys
from collections.abc import Callable
from contextvars import ContextVar
from types import FrameType
from typing import Any

from dataselect.errors import DataSelectError, InputError

# jinja2 compiles a template given as a string into code of this file name
TEMPLATE_CODE = "<template>"
# steps (template lines run) allowed per rendering: a base, and more per message
BASE_STEPS = 100_000
STEPS_PER_MESSAGE = 10_000
# characters a rendering may write: a base, and a multiple of the messages' own text
BASE_CHARACTERS = 1_000_000
CHARACTERS_PER_CHARACTER = 16
WHERE_TEMPLATE = "chat_template in tokenizer_config.json, or chat_template.jinja"


class _TooManySteps(Exception):
    """Raised inside the template's frames when the budget is spent."""


class _StepGuard:
    """A trace function that counts the template's lines, and the characters its frames
    yield (jinja2 renders by yielding pieces of text: a 'return' event each), and stops it
    past either budget; frames outside the template (jinja2's runtime, transformers) are
    not traced."""

    def __init__(self, budget: int, characters: int):
        self.budget = budget
        self.characters = characters
        self.steps = 0
        self.written = 0

    def call(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self.line if frame.f_code.co_filename == TEMPLATE_CODE else None

    def line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.steps += 1
            if self.steps > self.budget:
                raise _TooManySteps(f"ran more than {self.budget} steps")
        elif event == "return" and isinstance(arg, str):
            self.written += len(arg)
            if self.written > self.characters:
                raise _TooManySteps(f"wrote more than {self.characters} characters")
        return self.line


# --- one expression that builds a huge value ------------------------------------------
#
# The step budget counts template lines and the output budget counts what the template
# writes, but one expression is one step, and a value it builds without writing it is not
# output: ``'x' * 10**10``, ``[0] * 10**9``, ``'x'.center(10**10)``, ``2 ** 10**10``,
# ``'x' | indent(10**10)``, ``lipsum(10**8)`` each ask for gigabytes in one C call, which
# no budget checked between steps can stop (it ends in a MemoryError, or the machine
# swapping). So the template is compiled by a subclass of jinja2's immutable sandbox that
# works out, from its operands and before building it, how large each such value would
# be, and refuses one larger than the rendering may write (the output budget: such a
# value could not be written whole anyway, and real templates build values of about a
# message's size, so none of theirs comes near it). The same check on ``+`` and ``~``
# stops a loop that doubles a string stored in a namespace or passed to a macro, 40 steps
# to a terabyte. The limit travels in a ContextVar that render_template sets, so a
# rendering elsewhere in the process (no limit set) is exactly the stock sandbox's; the
# checks cost a few comparisons per operator, about 15% of a SmolLM2 rendering.

_LIMIT: ContextVar[int | None] = ContextVar("dataselect_chat_template_limit", default=None)
_SEQUENCES = (str, bytes, bytearray, list, tuple)
_CONTAINERS = (list, tuple, set, frozenset)
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.?)", re.S)
_NUMBER = re.compile(r"\d+")


class _TooLarge(Exception):
    """Raised, before it is built, for a value larger than the rendering may write."""

    def __init__(self, what: str, size: int, limit: int):
        super().__init__(f"builds {what} of about {size:,} characters in one expression, "
                         f"more than the {limit:,} it may write")


def _size(value: Any, limit: int) -> int:
    """About how many characters ``value`` takes written out: a string's length, an
    integer's digits, a container's items' sizes (counted until past ``limit``, so a
    huge one costs no more than ``limit`` items to measure)."""
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3 + 1  # log10(2) < 1/3
    if not isinstance(value, (*_CONTAINERS, dict)):
        return 8
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item) + 4  # quotes, comma, space as a list writes it
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 3
        elif isinstance(item, dict):
            total += 2
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            total += 2
            stack.extend(item)
        else:
            total += 8
    return total


def _repeated(count: Any, value: Any, limit: int) -> int:
    """The size of ``value`` repeated ``count`` times (``*`` of a sequence)."""
    return max(count, 0) * _size(value, limit) if isinstance(count, int) else 0


def _binop_size(operator: str, left: Any, right: Any, limit: int) -> int:
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            return _size(left, limit) + _size(right, limit)
        if isinstance(left, _SEQUENCES):
            return _repeated(right, left, limit)
        if isinstance(right, _SEQUENCES):
            return _repeated(left, right, limit)
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 \
                and abs(left) > 1:
            return (right * left.bit_length()) // 3 + 1
    elif operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            return _size(left, limit) + _size(right, limit)
    elif operator == "%" and isinstance(left, (str, bytes)):
        return _percent_size(left, right, limit)
    return 0


def _arguments_size(values: Any, limit: int) -> tuple[int, int]:
    """The largest argument's size, and the sum of the integer arguments (each may be a
    ``*`` width or precision)."""
    largest = max((_size(v, limit) for v in values), default=0)
    widths = sum(abs(v) for v in values if isinstance(v, int))
    return largest, widths


def _percent_size(form: str | bytes, values: Any, limit: int) -> int:
    """``form % values``: the form, every width and precision, and each conversion's
    argument at most the largest one."""
    text = form if isinstance(form, str) else form.decode("latin-1")
    if isinstance(values, dict):
        values = list(values.values())
    elif not isinstance(values, tuple):
        values = [values]
    largest, widths = _arguments_size(values, limit)
    size = len(text)
    for match in _PERCENT.finditer(text):
        width, precision, _kind = match.groups()
        size += largest
        for number in (width, precision):
            if number == "*":
                size += widths
            elif number:
                size += int(number)
    return size


def _format_size(form: str, args: Any, kwargs: dict[str, Any], limit: int) -> int:
    """``form.format(*args, **kwargs)``: as for ``%``; a width given by a nested field
    (``{:{w}}``) may be any integer argument."""
    values = [*args, *kwargs.values()]
    if len(values) == 1 and isinstance(values[0], dict):  # format_map
        values = list(values[0].values())
    largest, widths = _arguments_size(values, limit)
    size = len(form)
    try:
        fields = list(string.Formatter().parse(form))
    except ValueError:
        return size  # format() itself refuses it
    for _literal, name, spec, _conversion in fields:
        if name is None:
            continue
        size += largest + sum(int(n) for n in _NUMBER.findall(spec or ""))
        if spec and "{" in spec:
            size += widths
    return size


def _str_method_size(owner: Any, name: str, args: tuple, kwargs: dict[str, Any],
                     limit: int) -> int:
    """The size of ``owner.name(*args)`` for the string methods that can make a result
    larger than the string and their arguments."""
    def arg(i: int, key: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    if name in ("center", "ljust", "rjust", "zfill"):
        width = arg(0, "width", 0)
        return width if isinstance(width, int) else 0
    if name == "expandtabs":
        tabsize = arg(0, "tabsize", 8)
        return len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * (
            tabsize if isinstance(tabsize, int) else 0)
    if name == "replace":
        return _replace_size(owner, arg(0, "old", ""), arg(1, "new", ""),
                             arg(2, "count", -1))
    if name == "join":
        items = arg(0, "iterable", ())
        return _join_size(owner, items if isinstance(items, (*_CONTAINERS, dict)) else (),
                          limit)
    return 0


def _replace_size(text: Any, old: Any, new: Any, count: Any) -> int:
    try:
        found = text.count(old) if len(old) else len(text) + 1
        if isinstance(count, int) and count >= 0:
            found = min(found, count)
        return len(text) + found * len(new)
    except TypeError:
        return 0  # replace() itself refuses it


def _join_size(separator: Any, items: Any, limit: int) -> int:
    return _size(items, limit) + len(separator) * len(items)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _width(value: Any) -> int:
    return max(value, 0) if isinstance(value, int) else 0


# Size estimates for the jinja2 (and transformers) filters that can build a value much
# larger than their input, each from the filter's arguments by name.
_FILTER_SIZES: dict[str, Callable[[dict[str, Any], int], int]] = {
    "center": lambda a, limit: _width(a.get("width", 80)),
    "indent": lambda a, limit: len(_text(a["s"])) + (_text(a["s"]).count("\n") + 1) * (
        _width(a.get("width", 4)) if not isinstance(a.get("width"), str)
        else len(a["width"])),
    "join": lambda a, limit: _join_size(_text(a.get("d", "")), a["value"], limit),
    "replace": lambda a, limit: _replace_size(_text(a["s"]), _text(a["old"]),
                                              _text(a["new"]), a.get("count")),
    "format": lambda a, limit: _percent_size(_text(a["value"]),
                                             a.get("kwargs") or a.get("args", ()), limit),
    # at most a line per character, each ended by wrapstring
    "wordwrap": lambda a, limit: (len(_text(a["s"])) + 1) * (
        1 + len(_text(a.get("wrapstring") or ""))) if a.get("wrapstring") else 0,
    "batch": lambda a, limit: _width(a["linecount"]) if a.get("fill_with") is not None
    else 0,
    "slice": lambda a, limit: _width(a["slices"]),
    "tojson": lambda a, limit: _size(a.get("value", a.get("x")), limit) * (
        2 + len(_text(a["indent"])) if isinstance(a.get("indent"), str)
        else 2 + _width(a.get("indent"))) if a.get("indent") else 0,
}


def _checked_result(result: Any, what: str, limit: int) -> Any:
    """``result``, unless it is a string larger than the limit. A filter or method
    without an estimate grows its input by a small factor at most (``upper``,
    ``forceescape``), so the one built here is bounded, but a loop repeating it would
    not be: this check stops such a loop at its first value past the limit."""
    if isinstance(result, (str, bytes)) and len(result) > limit:
        raise _TooLarge(what, len(result), limit)
    return result


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a jinja2 filter), refusing a result larger than the limit: before
    it is built for the filters in ``_FILTER_SIZES``, after for the others. jinja2's
    pass_context / pass_eval_context / pass_environment marks are kept (functools.wraps
    copies them, and jinja2 reads them when it compiles a call)."""
    from jinja2.utils import _PassArg

    estimate = _FILTER_SIZES.get(name)
    if estimate is None:
        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            limit = _LIMIT.get()
            result = function(*args, **kwargs)
            return result if limit is None else _checked_result(
                result, f"a value with |{name}", limit)

        checked._dataselect_bounded = True  # type: ignore[attr-defined]
        return checked
    signature = inspect.signature(function)  # of the function it wraps, if it wraps one
    # jinja2's async_variant filters (slice, join, ...) take the context the wrapper is
    # marked for, but show the signature of the function they wrap, which may not
    skip = int(_PassArg.from_obj(function) is not None and next(
        iter(signature.parameters), "") not in ("context", "eval_ctx", "environment"))

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        limit = _LIMIT.get()
        if limit is None:
            return function(*args, **kwargs)
        try:
            bound = signature.bind(*args[skip:], **kwargs)
        except TypeError:
            return function(*args, **kwargs)  # the filter itself refuses these
        named = bound.arguments
        if name == "join" and not isinstance(named.get("value"), (*_CONTAINERS, dict)):
            named["value"] = list(named["value"])  # join reads it all anyway
            args, kwargs = (*args[:skip], *bound.args), bound.kwargs
        try:
            size = estimate(named, limit)
        except (KeyError, TypeError, ValueError, AttributeError):
            size = 0  # the filter itself refuses these arguments
        if size > limit:
            raise _TooLarge(f"a value with |{name}", size, limit)
        return _checked_result(function(*args, **kwargs), f"a value with |{name}", limit)

    bounded._dataselect_bounded = True  # type: ignore[attr-defined]
    return bounded


def _bounded_join(join: Callable[[Any], str]) -> Callable[[Any], str]:
    """jinja2's ``str_join`` / ``markup_join`` (the ``~`` operator), refusing a joined
    string larger than the limit."""

    @functools.wraps(join)
    def bounded(seq: Any) -> str:
        limit = _LIMIT.get()
        if limit is None:
            return join(seq)
        pieces = [piece if isinstance(piece, str) else str(piece) for piece in seq]
        size = sum(map(len, pieces))
        if size > limit:
            raise _TooLarge("a string with ~", size, limit)
        return join(pieces)

    return bounded


def _environment_class() -> type:
    """jinja2's ImmutableSandboxedEnvironment with the size checks above (made on first
    use: jinja2 is imported with transformers)."""
    global _BOUNDED_CLASS
    if _BOUNDED_CLASS is not None:
        return _BOUNDED_CLASS
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import generate_lorem_ipsum

    class BoundedSandboxedEnvironment(ImmutableSandboxedEnvironment):
        """The immutable sandbox, refusing (while a rendering has set a limit) a value
        larger than the limit before the operator, method, filter or global builds it.
        With no limit set it renders exactly as its parent."""

        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            limit = _LIMIT.get()
            if limit is not None:
                size = _binop_size(operator, left, right, limit)
                if size > limit:
                    raise _TooLarge(f"a value with {operator}", size, limit)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any,
                 **kwargs: Any) -> Any:
            limit = _LIMIT.get()
            if limit is None:
                return super().call(__context, __obj, *args, **kwargs)
            size, what = __self._call_size(__obj, args, kwargs, limit)
            if size > limit:
                raise _TooLarge(what, size, limit)
            return _checked_result(super().call(__context, __obj, *args, **kwargs),
                                   what or "a string with a call", limit)

        @staticmethod
        def _call_size(obj: Any, args: tuple, kwargs: dict[str, Any], limit: int
                       ) -> tuple[int, str]:
            wrapped = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
            owner = getattr(wrapped, "__self__", None)
            name = getattr(wrapped, "__name__", "")
            if isinstance(owner, str) and name in ("format", "format_map"):
                return _format_size(owner, args, kwargs, limit), f"a string with .{name}()"
            if isinstance(owner, (str, bytes, bytearray)):
                return _str_method_size(owner, name, args, kwargs, limit), \
                    f"a string with .{name}()"
            if wrapped is generate_lorem_ipsum:
                n = args[0] if args else kwargs.get("n", 5)
                words = args[3] if len(args) > 3 else kwargs.get("max", 100)
                if isinstance(n, int) and isinstance(words, int):
                    return max(n, 0) * max(words, 0) * 12, "lorem ipsum with lipsum()"
            return 0, ""

        def from_string(self, source: Any, *args: Any, **kwargs: Any) -> Any:
            """Compile with the size-checked filters and ``~``; the filters are wrapped
            here, not in __init__, because transformers adds its own (tojson) after
            making the environment."""
            for name, function in list(self.filters.items()):
                if callable(function) and not getattr(function, "_dataselect_bounded",
                                                      False):
                    self.filters[name] = _bounded_filter(name, function)
            template = super().from_string(source, *args, **kwargs)
            names = getattr(getattr(template, "root_render_func", None), "__globals__", {})
            for join in ("str_join", "markup_join"):
                if callable(names.get(join)):
                    names[join] = _bounded_join(names[join])
            return template

    _BOUNDED_CLASS = BoundedSandboxedEnvironment
    return _BOUNDED_CLASS


_BOUNDED_CLASS: type | None = None
_INSTALLED: bool | None = None


def _install() -> bool:
    """Make transformers compile chat templates with the bounded environment, once per
    process; True if it does.

    transformers makes the environment in ``chat_template_utils._cached_compile_jinja_
    template`` by the module's global name ``ImmutableSandboxedEnvironment`` and caches
    the compiled template (``_compile_jinja_template``, an lru_cache). Rebinding that
    name (to a subclass, which renders exactly as its parent while no limit is set, so
    any other caller in the process sees no change) and emptying the cache is the
    smallest hold on its internals; then a probe template is compiled through
    transformers' own function and its environment's class checked. If a transformers
    release renames any of it, the probe fails and rendering goes on with the step and
    output budgets only (a warning says so), rather than failing every template."""
    global _INSTALLED
    if _INSTALLED is not None:
        return _INSTALLED
    _INSTALLED = False
    try:
        from transformers.utils import chat_template_utils as utils

        bounded = _environment_class()
        if not issubclass(bounded, utils.ImmutableSandboxedEnvironment):
            return False
        utils.ImmutableSandboxedEnvironment = bounded
        utils._compile_jinja_template.cache_clear()
        probe = utils._compile_jinja_template("{{ 'dataselect' }}")
        _INSTALLED = isinstance(probe.environment, bounded)
    except Exception:  # any change in transformers' internals
        _INSTALLED = False
    if not _INSTALLED:
        logging.getLogger(__name__).warning(
            "this transformers renders chat templates in a way dataselect does not know: "
            "a template's single expressions are not size-checked (its steps and output "
            "still are)")
    return _INSTALLED


def render_template(tokenizer: Any, turns: list[dict[str, Any]], **options: Any) -> str:
    """``tokenizer.apply_chat_template(turns, tokenize=False, **options)``, bounded, with
    whatever the template raises told as one line naming the model folder (an error of
    dataselect's own, and running out of memory, stay themselves)."""
    text = sum(len(str(turn.get("content", ""))) for turn in turns)
    guard = _StepGuard(BASE_STEPS + STEPS_PER_MESSAGE * len(turns),
                       BASE_CHARACTERS + CHARACTERS_PER_CHARACTER * text)
    limit = _LIMIT.set(guard.characters if _install() else None)
    previous = sys.gettrace()
    sys.settrace(guard.call)
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, **options)
    except _TooLarge as exc:
        raise InputError(f"the model's chat template {exc} on one conversation of "
                         f"{len(turns)} messages; fix the template ({WHERE_TEMPLATE})",
                         where=_folder(tokenizer)) from None
    except _TooManySteps as exc:
        raise InputError(f"the model's chat template {exc} on one conversation of "
                         f"{len(turns)} messages (a loop without end?); "
                         f"fix the template ({WHERE_TEMPLATE})", where=_folder(tokenizer)
                         ) from None
    except (DataSelectError, MemoryError):
        raise
    except Exception as exc:  # the template is the folder's code: any failure is its own
        raise InputError(f"the model's chat template fails: {type(exc).__name__}: "
                         f"{_first_line(exc)}; fix the template ({WHERE_TEMPLATE}) or use "
                         "another model",
                         where=_folder(tokenizer)) from None
    finally:
        sys.settrace(previous)
        _LIMIT.reset(limit)


def _folder(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or "model")


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else "")[:200]
