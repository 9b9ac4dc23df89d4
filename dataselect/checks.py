"""One definition of every range a setting may take.

The command line (as argparse ``type=`` functions, through :func:`flag_type`), the Python
API (``SelectJob.validate``, the selection policies, the scorers' constructors) and YAML
recipes all call these functions, so a flag, a keyword argument and a recipe key cannot
disagree about what is allowed. A value outside its range fails before any work, with a
message naming the setting and the range, instead of as a traceback an hour later or, worse,
as a silently wrong result: a NaN threshold compares false with every score and selects
nothing, and NaN never fails a ``x < 0`` test.

Booleans are refused wherever a number is expected. ``True`` is an ``int`` in Python, so
``k: true`` in a recipe would otherwise select one row.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import reprlib
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dataselect import storage
from dataselect.errors import InputError
from dataselect.json_text import UnreadableJSON, read_json_file

SEED_MAX = 2**64 - 1
# integers travel into NumPy and torch arrays, whose integers are 64-bit signed
INT64_MAX = 2**63 - 1
# settings handed to C libraries as a C ``int`` (fastText's arguments)
C_INT_MAX = 2**31 - 1
# one partition of input at most 1 TiB; anything larger is a typo, not a plan
MAX_PARTITION_MB = 2**20
MIN_MEMORY_LIMIT = 2**20
SHOWN_CHARS = 80

T = TypeVar("T")


class SettingError(InputError):
    """A setting of the wrong type or outside its range. A subclass so that callers can tell
    a bad setting from a missing file (recipes check settings before files exist)."""


class ArgumentTypeError(SettingError, TypeError):
    """An argument of the wrong kind (a string where scores go, a list where a path goes):
    a ``TypeError`` for Python callers, and one line with exit status 2 on the command
    line like every other setting error."""


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A short repr: an error message must stay one readable line even when the value is a
    megabyte string or a deeply nested list (reprlib stops early instead of rendering all)."""
    short = reprlib.Repr()  # the keyword form needs Python 3.12
    short.maxstring = short.maxother = short.maxlong = limit
    short.maxlist = short.maxtuple = short.maxdict = 6
    short.maxlevel = 3
    text = short.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def or_list(names: Sequence[str]) -> str:
    """``a, b or c``: the choices a message offers, as a sentence reads them."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _bound(number: int | float) -> str:
    """``2**64 - 1`` reads better than twenty digits."""
    if isinstance(number, int) and number >= 2**16:
        if (number + 1) & number == 0:
            return f"2**{(number + 1).bit_length() - 1} - 1"
        if number & (number - 1) == 0:
            return f"2**{number.bit_length() - 1}"
    return f"{number:g}" if isinstance(number, float) else str(number)


def _fail(what: str, value: Any, name: str | None) -> SettingError:
    return SettingError(f"must be {what}, got {shown(value)}", field=name)


def wrong_type(what: str, value: Any, name: str | None) -> ArgumentTypeError:
    """The error for an argument of the wrong type; it names the type found, since its
    repr (a Corpus, a path) may look like the right thing."""
    return ArgumentTypeError(f"must be {what}, got {type(value).__name__} {shown(value)}",
                             field=name)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """Real numbers, ints included (``fraction: 1`` is fine); never booleans (NumPy's bool
    is not a ``numbers.Real``, Python's is)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value: Any, name: str | None = None, *, minimum: int | None = None,
              maximum: int | None = INT64_MAX) -> int:
    """An integer in ``[minimum, maximum]`` (not a bool, not ``1.0``, not ``"1"``); by
    default at most the largest 64-bit signed integer, which NumPy and torch can hold."""
    what = _integer_text(minimum, maximum)
    if not _is_integer(value):
        raise _fail(what, value, name)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _fail(what, value, name)
    return int(value)


def _integer_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum not in (None, INT64_MAX):
        return f"an integer in [{_bound(minimum)}, {_bound(maximum)}]"
    if minimum is not None:
        return f"an integer >= {_bound(minimum)}"
    return "an integer" if maximum is None else f"an integer <= {_bound(maximum)}"


def check_count(value: Any, name: str | None = None, *, minimum: int = 1,
                maximum: int = INT64_MAX) -> int:
    """A size or count: an integer ``>= 1`` unless told otherwise."""
    return check_int(value, name, minimum=minimum, maximum=maximum)


def check_seed(value: Any, name: str | None = "seed", maximum: int = SEED_MAX) -> int:
    """A seed: any unsigned 64-bit integer (or fewer bits where a library takes less)."""
    return check_int(value, name, minimum=0, maximum=maximum)


def check_number(value: Any, name: str | None = None, *, above: float | None = None,
                 at_least: float | None = None, at_most: float | None = None,
                 below: float | None = None) -> float:
    """A finite real number, optionally ``> above`` or ``>= at_least``, and ``<= at_most``
    or ``< below``.

    NaN and infinities are refused: no setting here means anything at infinity, and NaN
    passes no comparison, so it would slip through every other range check.
    """
    what = _number_text(above, at_least, at_most, below)
    number = _as_float(value)
    if number is None or not math.isfinite(number):
        raise _fail(what, value, name)
    if ((above is not None and not number > above)
            or (at_least is not None and not number >= at_least)
            or (at_most is not None and not number <= at_most)
            or (below is not None and not number < below)):
        raise _fail(what, value, name)
    return number


def _as_float(value: Any) -> float | None:
    """The value as a float, or None when it is not a number (or an int beyond floats)."""
    if not _is_number(value):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _number_text(above: float | None, at_least: float | None, at_most: float | None,
                 below: float | None) -> str:
    """The range in interval notation, or as one comparison when it is open on one side."""
    low = (f"({_bound(above)}" if above is not None
           else f"[{_bound(at_least)}" if at_least is not None else None)
    high = (f"{_bound(at_most)}]" if at_most is not None
            else f"{_bound(below)})" if below is not None else None)
    if low is not None and high is not None:
        return f"a finite number in {low}, {high}"
    for bound, sign in ((above, ">"), (at_least, ">="), (at_most, "<="), (below, "<")):
        if bound is not None:
            return f"a finite number {sign} {_bound(bound)}"
    return "a finite number"


def check_finite(value: Any, name: str | None = None) -> float:
    return check_number(value, name)


def check_positive(value: Any, name: str | None = None) -> float:
    return check_number(value, name, above=0)


def check_nonnegative(value: Any, name: str | None = None) -> float:
    return check_number(value, name, at_least=0)


def check_weights(weights: Sequence[Any], name: str = "weights") -> list[float]:
    """The weights of a weighted mean (``select.combine``, a recipe's ``combine.weights``)
    as floats: each finite and >= 0, not all zero, their sum a finite float, and each
    positive one still a normal float as a share of that sum. Why: the mean divides by the
    sum, so a sum that overflows makes every score NaN; a weight that is no float beside
    the others' sum drops out without a word (or, scaled as it was, leaves every row the
    same score). Checked before any work, once for the API and for recipes."""
    values = [check_nonnegative(w, name) for w in weights]
    total = sum(values)
    if not math.isfinite(total):
        raise SettingError(f"sum to more than a float holds ({shown(weights)}); only their "
                           "ratios count, so divide them all by one number", field=name)
    if total <= 0:
        raise SettingError(f"must not all be zero, got {shown(weights)}", field=name)
    tiny = next((w for w in values if 0 < w / total < sys.float_info.min), None)
    if tiny is not None:
        raise SettingError(f"{tiny!r} is too small beside their sum {total!r} to be a "
                           "share of it as a float (it underflows); give it as 0, or "
                           "weights nearer each other", field=name)
    return values


def check_fraction(value: Any, name: str | None = None) -> float:
    """A share of rows: in ``(0, 1]`` (an empty share would select or sample nothing)."""
    return check_number(value, name, above=0, at_most=1)


def check_probability(value: Any, name: str | None = None) -> float:
    """A share that may be zero: in ``[0, 1]``."""
    return check_number(value, name, at_least=0, at_most=1)


def check_partition_mb(value: Any, name: str | None = "partition_mb") -> float:
    """Target size of one input partition in MiB: in ``(0, 2**20]``."""
    return check_number(value, name, above=0, at_most=MAX_PARTITION_MB)


def partition_bytes(megabytes: float, name: str | None = "partition_mb") -> int:
    """Bytes of a checked partition size; at least one byte, however small the MiB."""
    return max(1, int(check_partition_mb(megabytes, name) * 2**20))


def check_memory_limit(value: Any, name: str | None = "memory_limit") -> str:
    """A local worker's memory limit as Dask reads it: ``auto``, a share of the machine's
    memory in (0, 1], or a size of at least 1 MiB such as ``4GiB``. Dask itself would take
    ``2`` as two bytes and ``-1`` as a negative limit, and fail on ``nan`` with a traceback.
    """
    what = "'auto', a share of memory in (0, 1] or a size >= 1 MiB such as '4GiB'"
    if not isinstance(value, str):
        raise _fail(what, value, name)
    if value == "auto":
        return value
    if not value.isascii():  # float() and Dask's sizes read any script's digits
        raise _fail(what + ASCII_HINT, value, name)
    try:
        share = float(value)
    except ValueError:
        share = None
    if share is not None and 0 < share <= 1:
        return value
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(value)
    except (ValueError, OverflowError):
        raise _fail(what, value, name) from None
    if size < MIN_MEMORY_LIMIT:
        raise _fail(what, value, name)
    return value


def check_scheduler(value: Any, name: str | None = "scheduler") -> str:
    """A Dask scheduler address, ``tcp://host:port`` (or ``host:port``, or another of
    Dask's schemes), checked before any work: Dask itself takes a malformed one (``foo``,
    ``tcp://``, ``http://...``) as far as the connection and fails there with a traceback,
    and a port out of range only after 30 s of retries. The registry of schemes and the
    parser are Dask's own, imported only when an address is given."""
    what = "a Dask scheduler address such as 'tcp://host:8786'"
    if not isinstance(value, str) or not value.strip():
        raise _fail(what, value, name)
    from distributed.comm import registry
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(value, strict=False)
        registry.get_backend(scheme)
        if scheme == "inproc":  # an in-process cluster's address: no host or port
            return value
        host, port = parse_host_port(location)
    except (ValueError, ImportError) as exc:
        raise SettingError(f"must be {what} ({exc}), got {shown(value)}", field=name) from None
    if not host or not 0 < port < 2**16:
        raise SettingError(f"must be {what} with a host and a port in [1, 65535], got "
                           f"{shown(value)}", field=name)
    return value


def optional(check: Callable[..., T], value: Any, name: str | None = None, **limits: Any
             ) -> T | None:
    """``check`` unless the value is None (a setting whose None means "automatic")."""
    return None if value is None else check(value, name, **limits)


# said when a number's text holds other characters than ASCII (number_from_text)
ASCII_HINT = " (write numbers with the ASCII digits 0-9)"


def number_from_text(kind: type, text: str) -> Any:
    """``int(text)`` or ``float(text)`` of ASCII text only, else ``ValueError``.

    Why: Python's ``int`` and ``float`` read any Unicode decimal digit and space, so
    ``--k ٥`` (an Arabic-Indic five), ``--k ５`` (full width) or ``--fraction ０.５`` were
    taken as the number a user may not have typed on purpose (or seen: such a digit can
    stand in for another script's letter). A setting's number is written in ASCII, as a
    recipe's YAML and JSON read numbers; anything else is refused, naming the setting."""
    if not text.isascii():
        raise ValueError(f"not ASCII: {text!r}")
    return kind(text)


def flag_type(check: Callable[..., T], kind: type, **limits: Any) -> Callable[[str], T]:
    """An argparse ``type=`` function: parse the text as ``kind`` and apply ``check``.

    Text that does not parse is handed to the check as is, so that "1.5" for an integer
    flag gets the same message (with the range) as "0" does. argparse prefixes the message
    with the flag's name and exits with status 2.
    """
    def parse(text: str) -> T:
        try:
            value: Any = number_from_text(kind, text) if kind in (int, float) else kind(text)
        except ValueError:
            value = text
        try:
            return check(value, None, **limits)
        except SettingError as exc:
            # show what was typed ("0"), not what it parsed to ("0.0")
            what = exc.message.rsplit(", got ", 1)[0]
            hint = ASCII_HINT if kind in (int, float) and not text.isascii() else ""
            raise argparse.ArgumentTypeError(f"{what}, got {shown(text)}{hint}") from None

    parse.__name__ = check.__name__.removeprefix("check_")
    return parse


def check_bool(value: Any, name: str | None = None) -> bool:
    """A yes/no setting: ``True`` or ``False`` only. ``overwrite="false"`` is a true value
    in Python, and would delete the results a folder holds; ``1`` is no answer either."""
    if type(value).__name__ not in ("bool", "bool_"):  # Python's or NumPy's, not 0/1/"no"
        raise wrong_type("True or False", value, name)
    return bool(value)


DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(value: Any, name: str | None = "device", *, here: bool = True) -> str:
    """A torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``), parsed as torch parses it;
    with ``here``, one this machine has. Checked before any work: torch would fail on a
    bad name with a RuntimeError, and on a missing GPU with an AssertionError, after the
    pool was read and the model loaded. Without ``here`` (a scorer that may run on a
    remote cluster's workers), only the spelling; the workers check the rest."""
    if not isinstance(value, str) or not value:
        raise SettingError(f"must be a device name such as cpu, cuda or cuda:1, got "
                           f"{shown(value)}", field=name)
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise SettingError(f"{value!r} is not a device: give cpu, cuda, cuda:N or mps",
                           field=name)
    if here:
        _check_device_here(device, value, name)
    return value


def _check_device_here(device: Any, value: str, name: str | None) -> None:
    import torch

    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SettingError(f"{value!r}: this machine has no CUDA device torch can use "
                               f"(torch {torch.__version__}): give cpu, or leave the "
                               "device out to use a GPU when there is one", field=name)
        if device.index is not None and device.index >= count:
            raise SettingError(f"{value!r}: this machine has {count} CUDA device(s), "
                               f"cuda:0 to cuda:{count - 1}", field=name)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SettingError(f"{value!r}: MPS (Apple GPU) is not available on this machine: "
                           "give cpu, or leave the device out", field=name)


def check_choice(value: Any, choices: tuple[str, ...], name: str | None = None) -> str:
    """One of ``choices`` (strings), compared exactly."""
    if not isinstance(value, str) or value not in choices:
        raise _fail(f"one of {', '.join(choices)}", value, name)
    return value


# the budgets each selection policy takes: a threshold is a policy of its own (every row
# scoring at least it), so it goes with "auto" only, and round_robin counts rows
POLICY_BUDGETS = {"auto": ("k", "fraction", "threshold"), "top_k": ("k", "fraction"),
                  "importance_resample": ("k", "fraction"), "round_robin": ("k",)}


def check_policy_budget(policy: Any, budgets: dict[str, Any], prefix: str = "",
                        needs_budget: bool = True, policy_name: str | None = None) -> None:
    """Exactly one budget (``k``, ``fraction`` or ``threshold``, the keys of ``budgets``),
    and one the policy takes. Before, a threshold given with ``round_robin`` or
    ``importance_resample`` silently replaced the policy, and ``round_robin`` with a
    fraction failed only after the whole scoring pass. ``prefix`` spells the names as the
    caller's user typed them (``--`` on the command line, ``selection.`` in a recipe), and
    ``policy_name`` the policy's, where it is not ``{prefix}policy``."""
    policy_name = policy_name or f"{prefix}policy"
    check_choice(policy, tuple(POLICY_BUDGETS), policy_name)
    given = [name for name, value in budgets.items() if value is not None]
    if len(given) > 1 or (needs_budget and not given):
        names = ", ".join(f"{prefix}{n}" for n in budgets)
        raise SettingError(f"give exactly one of {names}"
                           + (f", not {' and '.join(prefix + n for n in given)}"
                              if given else ""), field=f"{prefix}{given[-1] if given else 'k'}")
    takes = POLICY_BUDGETS[policy]
    for name in given:
        if name not in takes:
            allowed = " or ".join(prefix + n for n in takes)
            raise SettingError(f"{policy} takes {allowed}, not {prefix}{name}"
                               + (" (a threshold is a policy of its own: leave the policy "
                                  "at auto)" if name == "threshold" else ""),
                               field=policy_name)


def check_round_robin(policy: Any, per_target: bool, policy_name: str = "policy") -> None:
    """``round_robin`` ranks the pool by each target example's own score, which only a
    scorer that keeps them writes (``embed`` with ``per_target=true``; several scorers
    combined keep one score a row). Refused before any work: it failed after the whole
    scoring pass."""
    if policy == "round_robin" and not per_target:
        raise SettingError("round_robin needs one score per target example: one scorer "
                           "that keeps them (embed with per_target=true)", field=policy_name)


def usable_cores() -> int:
    """Cores this process may use (respects CPU affinity and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def max_local_workers() -> int:
    """The most workers a local cluster may have: 4 a core, at least 16. Each is a process
    (or a thread) started before any work; 100,000 of them had a job build Dask nannies one
    at a time for minutes, deaf to Ctrl-C, before it failed."""
    return max(16, 4 * usable_cores())


def check_local_workers(workers: Any, scheduler_name: str = "scheduler") -> None:
    if isinstance(workers, int) and not isinstance(workers, bool) \
            and workers > max_local_workers():
        raise SettingError(f"{workers} local workers on a machine with {usable_cores()} "
                           f"cores: a local cluster starts each one before any work; use at "
                           f"most {max_local_workers()}, or run on a cluster "
                           f"({scheduler_name})", field="workers")


def check_cluster(scheduler: Any, local: dict[str, Any], scheduler_name: str = "scheduler"
                  ) -> None:
    """Settings of a local cluster (``workers``, ``memory_limit``, ``worker_kind``: the keys
    of ``local``, None or their default where not given) mean nothing to a running
    scheduler's cluster, which has its own workers; given together, one was silently
    ignored. The names are spelt as the caller's user typed them."""
    if scheduler is None:
        check_local_workers(local.get("workers"), scheduler_name)
        return
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise _fail("a scheduler address such as tcp://host:8786", scheduler, scheduler_name)
    given = [name for name, value in local.items() if value not in (None, "auto")]
    if given:
        raise SettingError(f"applies to a local cluster only; with {scheduler_name} the "
                           "cluster's own workers run the job: leave it out", field=given[0])


def check_name(value: Any, name: str | None = None) -> str:
    """A non-empty string: a column name, a text spec."""
    if not isinstance(value, str):
        raise wrong_type("a non-empty string", value, name)
    if not value:
        raise _fail("a non-empty string", value, name)
    return value


def check_path(value: Any, name: str | None = None) -> str:
    """One path, as a ``str`` or ``os.PathLike`` (``pathlib.Path``); returned as ``str``."""
    text = os.fspath(value) if isinstance(value, str | os.PathLike) else None
    if not isinstance(text, str):  # bytes paths too: every path here is text
        raise wrong_type("a path (str or pathlib.Path)", value, name)
    if not text:
        raise _fail("a path (str or pathlib.Path)", value, name)
    storage.refuse_nul(text, name)
    return check_utf8_name(text, name)


def check_utf8_name(path: str, name: str | None = None) -> str:
    """Refuse a path whose bytes are not UTF-8 (Python carries them as lone surrogates):
    Arrow, Parquet metadata, the manifest's JSON and Dask's messages all hold paths as
    UTF-8 and fail on it deep inside, as a traceback."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        shown_name = raw.decode("utf-8", "backslashreplace")
        if _utf8(raw) and sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"):
            raise InputError(
                f"the name is valid UTF-8, but Python reads file names as "
                f"{sys.getfilesystemencoding()} here (the locale is {_locale_name()}): run "
                "with LC_ALL=C.UTF-8 or PYTHONUTF8=1", where=shown_name, field=name) from None
        raise InputError("the name is not valid UTF-8 (undecodable bytes shown as \\xNN); "
                         "rename it with UTF-8 characters", where=shown_name,
                         field=name) from None
    return path


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _locale_name() -> str:
    """The locale that chose the file-name encoding, as the environment sets it."""
    for variable in ("LC_ALL", "LC_CTYPE", "LANG"):
        if os.environ.get(variable):
            return f"{variable}={os.environ[variable]}"
    return "unset"


def check_local_layout(out: str, save_to_disk: bool) -> None:
    """``save_to_disk`` writes the layout ``datasets.load_from_disk`` reads, which is a
    local folder; an object-store output cannot hold it."""
    if save_to_disk and storage.is_remote(out):
        raise SettingError("writes a local datasets folder, and the output is an object-store "
                           "URL; leave save_to_disk out (datasets reads the Parquet parts "
                           "from the URL), or write to a local --out", field="save_to_disk")


def check_local_output(out: str | None, what: str) -> None:
    """Refuse an object-store URL as the output of a command that writes local files
    (models, indexes, reports): it would become a local folder named ``s3:``."""
    if out is not None and storage.is_remote(out):
        raise InputError(f"{what} writes local files; only dataselect select and score "
                         "write to an object store: give a local --out, then copy it",
                         where=out, field="out")


def check_paths(value: Any, name: str | None = None) -> list[str]:
    """Input paths, files, folders or globs: one path, or a non-empty list or tuple of
    them. A string is one path, never a sequence of one-letter paths."""
    what = "a path or a non-empty list of paths"
    if isinstance(value, list | tuple):
        if not value:
            raise _fail(what, value, name)
        if not all(isinstance(item, str | os.PathLike) for item in value):
            wrong = next(i for i in value if not isinstance(i, str | os.PathLike))
            raise wrong_type(f"{what}, with no {type(wrong).__name__} in it", value, name)
        return [check_path(item, name) for item in value]
    if not isinstance(value, str | os.PathLike):
        raise wrong_type(what, value, name)
    return [check_path(value, name)]


def check_hf_data_files(folder: str) -> list[str]:
    """The data files a ``save_to_disk`` folder's ``state.json`` lists, each refused unless
    it is a file inside ``folder``.

    Why: ``datasets.load_from_disk`` opens whatever ``_data_files`` names, ``../x.arrow``
    or ``/etc/hostname`` included, so an edited ``state.json`` would read rows from outside
    the folder: past the folder's identity (which covers the files below it, so a change
    to the outside file would go unnoticed and a finished job be reused), or past the
    output folder :func:`dataselect.load_hf` was given."""
    state = os.path.join(folder, "state.json")
    try:
        names = [entry["filename"] for entry in read_hf_state(folder)["_data_files"]]
    except (KeyError, TypeError):
        raise _not_a_state(state) from None
    root = os.path.realpath(folder)
    paths = []
    for name in names:
        path = os.path.realpath(os.path.join(folder, str(name)))
        if os.path.dirname(path) != root or not os.path.isfile(path):
            raise InputError(f"names the data file {shown(name)}, which is not a file in "
                             f"this folder ({folder}); a save_to_disk folder holds its own "
                             "data files: restore state.json, or save the dataset again",
                             where=state, field="_data_files")
        paths.append(path)
    return paths


def read_hf_state(folder: str) -> dict[str, Any]:
    """The JSON object of a ``save_to_disk`` folder's ``state.json``, or one line naming it
    (a FIFO or device there is refused: reading it would wait forever)."""
    state = os.path.join(folder, "state.json")
    check_regular_file(state)
    try:
        found = read_json_file(state)
    except OSError as exc:
        raise InputError(f"cannot read it ({exc.strerror or exc})", where=state) from None
    except UnreadableJSON:
        raise _not_a_state(state) from None
    if not isinstance(found, dict):
        raise _not_a_state(state)
    return found


def _not_a_state(state: str) -> InputError:
    return InputError("is not a Hugging Face save_to_disk state (a JSON object whose "
                      "_data_files lists {filename: ...} entries): restore it, or save "
                      "the dataset again", where=state)


def special_kind(path: str | os.PathLike) -> str:
    """What a path that is neither a file nor a folder is, in words a user recognises."""
    return _kind_of(os.stat(path).st_mode)


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def special_at(path: str | os.PathLike, *, follow: bool) -> str | None:
    """What stands at ``path`` in words (``"a FIFO"``) when it is neither a regular file,
    a folder nor a link, else None (also when nothing is there). Found with ``lstat``, so
    nothing is opened: opening a FIFO waits for a writer, forever. ``follow``: a link is
    judged by what it points at (a reader would open that); otherwise a link is itself
    judged, as a rename replaces the link, never what it points at."""
    try:
        mode = os.lstat(path).st_mode
        if follow and stat.S_ISLNK(mode):
            mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, a dangling link, a NUL in the name
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    return _kind_of(mode)


def refuse_special_output(path: str | os.PathLike) -> None:
    """Refuse a FIFO, device or socket at a name dataselect writes its own file to (a part,
    ``.manifest.json``, a ``.stats`` file, ``.report/index.html``). It is not a file
    dataselect wrote, so it is not replaced without a word, as a rename would replace it."""
    kind = special_at(path, follow=False)
    if kind is not None:
        raise InputError(f"is not a regular file ({kind}), but dataselect writes its own "
                         "file at this name: move it away, then rerun", where=os.fspath(path))


def refuse_folder_output(path: str | os.PathLike) -> None:
    """Refuse a folder at a name dataselect writes its own file to (a rank file in a
    store's ``.ranks/``, a part): the rename that puts the file in place fails on it with
    a raw ``IsADirectoryError`` naming the temporary, a file the user never saw. The
    folder is the user's (dataselect writes files there, never folders), so it is neither
    replaced nor emptied; the line names it. ``lstat``: a link to a folder is a link, which
    the rename replaces itself, as ever."""
    try:
        mode = os.lstat(path).st_mode
    except (OSError, ValueError):  # missing, or a NUL in the name (the write names it)
        return
    if stat.S_ISDIR(mode):
        raise InputError("is a folder, but dataselect writes its own file at this name: "
                         "move it away, then rerun", where=os.fspath(path))


def check_regular_file(path: str | os.PathLike) -> None:
    """Refuse a FIFO, device or socket where dataselect reads a file (a JSON record, a
    recipe, a model's config) before it is opened: opening a FIFO waits for a writer,
    forever, and a device reads as endless or empty text. A missing file or a folder is
    left to the open that follows, which names it; a NUL in the name is refused."""
    storage.refuse_nul(os.fspath(path))
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise InputError(f"is not a regular file ({special_kind(path)}): replace it with the "
                         "file it should be", where=os.fspath(path))
