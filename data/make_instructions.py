"""Build the small instruction-tuning mixture under data/instructions/ from installed text.

Why this exists: instruction-data selection methods (LESS and its relatives) need a pool of
chat-style examples from several tasks, each with a few subtasks, plus small held-out dev
sets per task, so a method can be scored by how much of the right task it picks. Nothing
here is synthetic: every prompt and answer is cut from text that Debian packages ship, and
only the question wording is a fixed template. The four tasks:

* ``code``: Python 3.11 standard library functions and methods that have a docstring. The
  prompt gives the module, the signature and the docstring; the answer is the source
  without the docstring, so the answer is not in the prompt. Only top-level functions
  and methods of top-level classes whose answer has 3 to 25 lines and at most 1,200
  characters (docstring at most 1,200 too); tests, IDLE and add-on packages are skipped.
  Subtask: an area of the standard library chosen from the top-level module (``text``,
  ``system`` or ``core``; see ``TEXT_MODULES`` and ``SYSTEM_MODULES``).
* ``define``: WordNet 3.0 glosses of words that have a single sense in their part of
  speech, so the question has one answer. Subtask: ``noun``, ``verb``, ``adj``, ``adv``.
* ``summarize``: the one-line description from the NAME section of English man pages.
  Subtask: ``commands`` (sections 1, 6, 8), ``calls`` (2, 3) or ``files`` (4, 5, 7). The
  ``gcloud`` pages of google-cloud-cli are left out: on the build machine they are about
  16,600 near-identical pages that would otherwise swamp the task.
* ``translate``: the NAME description of the same page in English and in a translation
  that a package ships under ``/usr/share/man/<lang>/``. Subtask: the target language; the
  ``TOP_LANGUAGES`` languages with the most pairs are kept.

Outputs (relative to --out, default: ``instructions/`` next to this script):

* ``train.jsonl``: the pool, up to --per-task rows per task, spread as evenly over the
  task's subtasks as their sizes allow, all tasks shuffled together.
* ``targets/<task>.jsonl``: --dev-per-task held-out rows per task, spread evenly over the
  task's subtasks, none in the pool.
* ``eval/<task>.jsonl`` (with ``--eval-only``): --eval-per-task further held-out rows per
  task for ``dataselect eval`` (the held-out loss of a model trained on a selection). They
  are drawn from the candidates this machine finds, leaving out every row whose user or
  assistant text is already in the committed ``train.jsonl`` or ``targets/``, so they are
  held out even where a rebuild here would not reproduce the pool byte for byte (the man
  pages differ with what a machine has installed). The pool and dev files are not touched.

Each line is a JSON object with keys id, messages (a user then an assistant message),
task, subtask and source (the file the text came from; for ``translate`` the translated
page, whose English original is the same path without ``<lang>/``).

Rerun (from the repository root, on Debian 12 bookworm)::

    sudo apt-get install -y libpython3.11-stdlib wordnet-base manpages manpages-dev \\
        adduser apt base-passwd debianutils dpkg dpkg-dev fakeroot login man-db net-tools \\
        passwd procps psmisc sensible-utils vim-common vim-runtime xxd xz-utils
    python3 data/make_instructions.py --out data/instructions --seed 0   # ~9 s
    python3 data/make_instructions.py --out data/instructions --seed 0 --eval-only

There is no manpages-de/manpages-fr here: the translated pages come with the packages
themselves (``dpkg -S /usr/share/man/de/man1/dpkg.1.gz`` names dpkg), and the second and
third lines list the packages that ship the ones used. The English pages for
``summarize`` are those of every installed package (openssl, systemd, git-man,
coreutils, ... besides manpages and manpages-dev).

Determinism: candidate rows are deduplicated and sorted by id before any draw, each task
draws with its own ``random.Random`` seeded from --seed, and files are walked in sorted
order, so the same installed files and seed give byte-identical output. Dedup is by
content over the whole mixture: a row is dropped when its user or its assistant text
already occurs in a row with a smaller id, so no dev text can appear in the pool. The
dev rows are drawn before the pool rows, so they do not depend on --per-task. Which
files exist depends on the packages installed, so a rebuild elsewhere may differ.
Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import random
import re
import sys
import textwrap
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

PYTHON_LIB = Path("/usr/lib/python3.11")
WORDNET_DIR = Path("/usr/share/wordnet")
MAN_DIR = Path("/usr/share/man")

DEFAULT_PER_TASK = 400
DEFAULT_DEV_PER_TASK = 10
DEFAULT_EVAL_PER_TASK = 40
TASKS = ("code", "define", "summarize", "translate")

# --- code ---------------------------------------------------------------------------

SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages"}
MIN_LINES, MAX_LINES, MAX_CHARS = 3, 25, 1200
MAX_DOC_CHARS = 1200
# Top-level modules whose functions mostly handle text, markup, mail or data formats.
TEXT_MODULES = {
    "base64", "calendar", "codecs", "configparser", "csv", "difflib", "email", "encodings",
    "fnmatch", "gettext", "glob", "html", "json", "locale", "mailbox", "mimetypes", "netrc",
    "plistlib", "pprint", "quopri", "re", "reprlib", "shlex", "string", "textwrap", "tokenize",
    "tomllib", "xdrlib", "xml",
}
# ... and those that deal with the operating system, files, processes, imports or networks.
SYSTEM_MODULES = {
    "_aix_support", "_osx_support", "_pyio", "asynchat", "asyncio", "bz2", "cgi", "cgitb",
    "compileall", "concurrent", "crypt", "ctypes", "curses", "dbm", "distutils", "ensurepip",
    "filecmp", "fileinput", "ftplib", "genericpath", "getpass", "gzip", "http", "imaplib",
    "importlib", "ipaddress", "logging", "lzma", "mailcap", "multiprocessing", "nntplib", "ntpath",
    "os", "pathlib", "pipes", "pkgutil", "platform", "poplib", "posixpath", "pty", "runpy",
    "sched", "selectors", "shelve", "shutil", "signal", "site", "smtpd", "smtplib", "socket",
    "socketserver", "ssl", "stat", "subprocess", "sysconfig", "tarfile", "telnetlib", "tempfile",
    "threading", "tty", "urllib", "uuid", "venv", "webbrowser", "wsgiref", "xmlrpc", "zipapp",
    "zipfile", "zipimport",
}

# --- translate ------------------------------------------------------------------------

LANGUAGES = {
    "cs": "Czech", "da": "Danish", "de": "German", "es": "Spanish", "fi": "Finnish",
    "fr": "French", "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "pl": "Polish",
    "pt": "Portuguese", "pt_BR": "Brazilian Portuguese", "ro": "Romanian",
    "ru": "Russian", "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish", "tr": "Turkish",
    "uk": "Ukrainian", "zh_CN": "Simplified Chinese", "zh_TW": "Traditional Chinese",
}
TOP_LANGUAGES = 5
MAN_SUBTASKS = {"1": "commands", "6": "commands", "8": "commands", "2": "calls",
                "3": "calls", "4": "files", "5": "files", "7": "files"}
MAX_DESCRIPTION = 300

Row = dict


def make_row(task: str, subtask: str, user: str, answer: str, source: Path | str) -> Row:
    """One record; the id hashes the two messages, so equal content gives equal ids."""
    digest = hashlib.sha1(f"{user}\0{answer}".encode()).hexdigest()[:16]
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"id": f"{task}-{digest}", "messages": messages, "task": task,
            "subtask": subtask, "source": str(source)}


# --- code: Python standard library -----------------------------------------------------


def python_files(root: Path) -> Iterator[Path]:
    """Standard library .py files in sorted order, without tests, IDLE and add-on packages."""
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if path.is_symlink() or SKIP_DIRS.intersection(parts[:-1]):
            continue
        yield path


def module_name(root: Path, path: Path) -> str:
    """Dotted module name of a file: email/utils.py -> email.utils, json/__init__.py -> json."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def code_area(module: str) -> str:
    """The code subtask: a coarse area of the standard library, from the top-level module."""
    top = module.split(".")[0]
    if top in TEXT_MODULES:
        return "text"
    if top in SYSTEM_MODULES:
        return "system"
    return "core"


def defs_with_owner(tree: ast.Module) -> Iterator[tuple[str | None, ast.FunctionDef]]:
    """Top-level functions (owner None) and the methods of top-level classes."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield None, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    yield node.name, item


def strip_docstring(lines: list[str], func: ast.FunctionDef) -> str | None:
    """The function's source (decorators included) with its docstring lines cut out.

    None when the docstring shares a line with other code, the rest is too short or too
    long, or the result no longer parses on its own.
    """
    doc, after = func.body[0], func.body[1]
    if doc.lineno <= func.lineno or after.lineno <= doc.end_lineno:
        return None
    # ast column offsets count UTF-8 bytes
    first = lines[doc.lineno - 1].encode()
    last = lines[doc.end_lineno - 1].encode()
    end = lines[func.end_lineno - 1].encode()
    if first[: doc.col_offset].strip() or last[doc.end_col_offset :].strip():
        return None
    if end[func.end_col_offset :].strip():
        return None
    start = func.decorator_list[0].lineno if func.decorator_list else func.lineno
    kept = lines[start - 1 : doc.lineno - 1] + lines[doc.end_lineno : func.end_lineno]
    source = textwrap.dedent("".join(kept)).rstrip() + "\n"
    if not MIN_LINES <= source.count("\n") <= MAX_LINES or len(source) > MAX_CHARS:
        return None
    try:
        ast.parse(source)
    except SyntaxError:
        return None
    return source


def code_prompt(module: str, owner: str | None, func: ast.FunctionDef, doc: str) -> str:
    """The instruction: what to write (signature, module, class) and the docstring text."""
    signature = f"{func.name}({ast.unparse(func.args)})"
    if func.returns is not None:
        signature += f" -> {ast.unparse(func.returns)}"
    if owner is None:
        what = f"Write a Python function `{signature}` for the module `{module}`"
    else:
        what = f"Write the method `{signature}` of the class `{owner}` in the module `{module}`"
    return f"{what}. Its docstring says:\n\n{doc}"


def code_rows(root: Path) -> Iterator[Row]:
    """One row per documented function or method whose body fits the size limits."""
    for path in python_files(root):
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        lines = text.splitlines(keepends=True)
        module = module_name(root, path)
        for owner, func in defs_with_owner(tree):
            doc = ast.get_docstring(func)
            if not doc or len(func.body) < 2 or len(doc) > MAX_DOC_CHARS:
                continue
            source = strip_docstring(lines, func)
            if source is not None:
                prompt = code_prompt(module, owner, func, doc.strip())
                yield make_row("code", code_area(module), prompt, source, path)


# --- define: WordNet ---------------------------------------------------------------------

WORDNET_POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}


def wordnet_synsets(path: Path) -> Iterator[tuple[list[str], str]]:
    """(words, gloss) per synset line of a WordNet data file; licence lines are skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  ") or "|" not in line:
                continue
            fields, gloss = line.split("|", 1)
            parts = fields.split()
            count = int(parts[3], 16)
            words = [re.sub(r"\((a|p|ip)\)$", "", w) for w in parts[4 : 4 + 2 * count : 2]]
            yield words, gloss.strip()


def definition(gloss: str) -> str:
    """The gloss up to its first example quote: 'a dog; "the dog barked"' -> 'a dog'."""
    return gloss.split('; "', 1)[0].strip().rstrip(";").strip()


def define_rows(wordnet_dir: Path) -> Iterator[Row]:
    """One row per word that has exactly one sense in its part of speech."""
    for pos, name in WORDNET_POS.items():
        path = wordnet_dir / f"data.{pos}"
        synsets = list(wordnet_synsets(path))
        senses: dict[str, int] = {}
        for words, _ in synsets:
            for word in {w.lower() for w in words}:
                senses[word] = senses.get(word, 0) + 1
        for words, gloss in synsets:
            text = definition(gloss)
            if len(text) < 3 or text.startswith('"'):
                continue
            for word in words:
                if senses[word.lower()] == 1:
                    prompt = f"Define the {name} '{word.replace('_', ' ')}'."
                    yield make_row("define", pos, prompt, text, path)


# --- man pages: NAME sections ----------------------------------------------------------

ACCENTS = {":": "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", ",": "\u0327",
           "~": "\u0303", "o": "\u030a", "v": "\u030c"}
GLYPHS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”",
    "oq": "‘", "cq": "’", "Bq": "„", "bq": "‚", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›",
    "bu": "•", "co": "©", "rg": "®", "tm": "™", "pl": "+", "ti": "~", "ha": "^", "rs": "\\",
    "sl": "/", "ga": "`", "de": "°", "mu": "×", "ss": "ß", "ae": "æ", "AE": "Æ",
    "/o": "ø", "/O": "Ø", "oe": "œ", "OE": "Œ", "->": "→", "<-": "←", "<=": "≤",
    ">=": "≥", "12": "½", "R": "®", "Tm": "™", "C+": "C++", "--": "—", "-": "-",
    "Aq": "'", "L\"": "“", "R\"": "”", "C'": '"', "C`": '"',
}
ESCAPE = re.compile(
    r"\\(?:\((?P<two>..)|\[(?P<long>[^\]]*)\]|\*(?:\((?P<str2>..)|\[(?P<strl>[^\]]*)\]|"
    r"(?P<str1>.))|f(?:\(..|\[[^\]]*\]|.)|s[-+]?(?:\d|\(\d\d|\[[^\]]*\])|(?P<one>.))"
)
DROP = set("&%|^:c)/,") | {"{", "}"}
SPACE = set(" ~0")


def glyph(name: str) -> str | None:
    """The character a groff special-character name stands for, or None if unknown."""
    if name in GLYPHS:
        return GLYPHS[name]
    if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
        return chr(int(name[1:], 16))
    if len(name) == 2 and name[0] in ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + ACCENTS[name[0]])
    return None


def unescape(text: str) -> str | None:
    """Plain text from troff: drop font and size changes, resolve special characters.

    None when the text uses an escape this does not know, so garbage never gets through.
    """
    unknown = False

    def replace(m: re.Match) -> str:
        nonlocal unknown
        name = m["two"] or m["long"] or m["str2"] or m["strl"] or m["str1"]
        if name is not None:
            char = glyph(name)
            unknown |= char is None
            return char or ""
        one = m["one"]
        if one is None:  # a font or size change
            return ""
        if one in DROP:
            return ""
        if one in SPACE:
            return " "
        if one in "-.'":
            return one
        if one in "e\\":
            return "\\"
        unknown = True
        return ""

    text = ESCAPE.sub(replace, text)
    return None if unknown else text


def request_text(line: str) -> str | None:
    """Text that a font request line carries (.B foo, .BR a b), or None for other requests."""
    macro, _, args = line[1:].partition(" ")
    if macro in {"B", "I", "SM", "SB"}:
        return args.strip().strip('"')
    if len(macro) == 2 and set(macro) <= set("BIR"):
        return "".join(a.strip('"') for a in re.findall(r'"[^"]*"|\S+', args))
    return None


def name_section(lines: Iterable[str], english: bool) -> str | None:
    """The text of a page's first section (NAME), joined onto one line.

    man(7) pages: the lines between the first .SH and the next; mdoc(7) pages: the
    argument of .Nd. With english=True the heading must read NAME; translations put
    their own word there (BEZEICHNUNG, NOM, NAMN, ...), so any first heading counts.
    """
    found, in_macro, parts, names = False, False, [], []
    for raw in lines:
        line = raw.rstrip("\n")
        if in_macro or re.match(r"\.\s*(de|am)1?\s", line):  # skip macro definitions
            in_macro = not re.fullmatch(r"\.\s*\.\s*", line)
            continue
        if line.startswith(('.\\"', "'\\\"")):
            continue
        line = line.split('\\"', 1)[0]
        heading = re.match(r"\.(SH|Sh)(?:\s+(.*))?$", line)
        if heading:
            if found:
                break
            title = (heading[2] or "").strip().strip('"').upper()
            if english and title != "NAME":
                return None
            found = True
            continue
        if not found:
            continue
        if parts and re.match(r"\.(sp|PP|LP|P|TP|IP|Pp)\b", line):
            break  # NAME is one paragraph; some pages run on without a new heading
        if line.startswith(".Nm"):
            names.append(line[3:].strip())
        elif line.startswith(".Nd"):
            parts.append(f"{' '.join(names)} \\- {line[3:].strip()}")
        elif line.startswith((".", "'")):
            text = request_text(line)
            if text:
                parts.append(text)
        elif line.strip():
            parts.append(line.strip())
    return " ".join(parts) if found and parts else None


def man_description(path: Path, english: bool) -> str | None:
    """The description after the dash in a gzipped page's NAME line, or None."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            head = [line for _, line in zip(range(400), f)]
    except (OSError, UnicodeDecodeError, EOFError):
        return None
    if head and head[0].startswith(".so "):
        return None
    raw = name_section(head, english)
    if raw is None:
        return None
    split = re.split(r"\s+(?:\\&)?\\-(?:\\-)?\s*|\s+(?:\\\(em|\\\(en|—|–|--?)\s+", raw, maxsplit=1)
    if len(split) != 2:
        return None
    text = unescape(split[1])
    if text is None:
        return None
    text = " ".join(text.split())
    # lz4, zstd: "lz4 \- lz4, unlz4, lz4cat \- Compress ...": drop the repeated name list
    text = re.sub(r"^[\w.+-]+(?:, [\w.+-]+)+ - ", "", text)
    if not 3 <= len(text) <= MAX_DESCRIPTION or "\\" in text:
        return None
    return text


def page_name(path: Path) -> tuple[str, str]:
    """(name, section) from a page file name: ls.1.gz -> ('ls', '1')."""
    stem = path.name.removesuffix(".gz")
    name, _, section = stem.rpartition(".")
    return name, section


def english_pages(man_dir: Path) -> Iterator[Path]:
    """English pages (man1 .. man8), sorted, skipping links and the gcloud reference."""
    for section in range(1, 9):
        for path in sorted((man_dir / f"man{section}").glob("*.gz")):
            if not path.is_symlink() and not path.name.startswith("gcloud"):
                yield path


def summarize_prompt(name: str, section: str) -> str:
    """The question for a page, worded for its kind: command, call, or file/overview."""
    kind = MAN_SUBTASKS[section[0]]
    if kind == "commands":
        ask = f"What does the command `{name}` do?"
    elif section == "2":
        ask = f"What does the system call `{name}(2)` do?"
    elif section == "3":
        ask = f"What does the library function `{name}(3)` do?"
    elif kind == "calls":
        ask = f"What does `{name}({section})` provide?"
    else:
        ask = f"What is `{name}({section})` about?"
    return f"{ask} Answer in one line."


def summarize_rows(english: dict[Path, str]) -> Iterator[Row]:
    """One row per English page with a usable NAME line."""
    for path, text in english.items():
        name, section = page_name(path)
        if section[:1] in MAN_SUBTASKS:
            kind = MAN_SUBTASKS[section[0]]
            yield make_row("summarize", kind, summarize_prompt(name, section), text, path)


def translate_rows(man_dir: Path, english: dict[Path, str]) -> Iterator[Row]:
    """English/translated NAME descriptions of the same page, top languages only."""
    by_lang: dict[str, list[Row]] = {}
    for lang in sorted(LANGUAGES):
        for path in sorted((man_dir / lang).glob("man[1-8]/*.gz")):
            source = english.get(man_dir / path.relative_to(man_dir / lang))
            if source is None or path.is_symlink():
                continue
            target = man_description(path, english=False)
            if target is None or target == source:
                continue
            prompt = f"Translate into {LANGUAGES[lang]}: {source}"
            by_lang.setdefault(lang, []).append(make_row("translate", lang, prompt, target, path))
    sizes = {lang: len(dedupe(rows)) for lang, rows in by_lang.items()}
    for lang in sorted(sizes, key=lambda k: (-sizes[k], k))[:TOP_LANGUAGES]:
        yield from by_lang[lang]


# --- selection ------------------------------------------------------------------------


def dedupe(rows: Iterable[Row]) -> list[Row]:
    """Rows sorted by id, dropping any whose user or assistant text an earlier row has."""
    seen: set[str] = set()
    kept = []
    for row in sorted(rows, key=lambda r: r["id"]):
        keys = {m["content"] for m in row["messages"]}
        if keys & seen:
            continue
        seen |= keys
        kept.append(row)
    return kept


def allocate(total: int, available: dict[str, int]) -> dict[str, int]:
    """Split `total` over groups as evenly as their sizes allow (extra to the first names)."""
    quota = dict.fromkeys(available, 0)
    left = min(total, sum(available.values()))
    while left > 0:
        open_groups = [k for k in sorted(available) if quota[k] < available[k]]
        share, extra = divmod(left, len(open_groups))
        for i, key in enumerate(open_groups):
            give = min(available[key] - quota[key], share + (i < extra))
            quota[key] += give
            left -= give
    return quota


def split_task(
    rows: list[Row], task: str, seed: int, per_task: int, dev: int
) -> tuple[list[Row], list[Row]]:
    """(train, dev) rows of one task: dev spread over subtasks first, then the pool."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row["subtask"], []).append(row)
    rng = random.Random(f"{seed}:{task}")
    for name in sorted(groups):
        rng.shuffle(groups[name])
    dev_quota = allocate(dev, {k: len(v) for k, v in groups.items()})
    rest = {k: v[dev_quota[k] :] for k, v in groups.items()}
    train_quota = allocate(per_task, {k: len(v) for k, v in rest.items()})
    dev_rows = [r for k in sorted(groups) for r in groups[k][: dev_quota[k]]]
    train_rows = [r for k in sorted(rest) for r in rest[k][: train_quota[k]]]
    return train_rows, sorted(dev_rows, key=lambda r: (r["subtask"], r["id"]))


def write_jsonl(path: Path, rows: Iterable[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def collect(python_lib: Path, wordnet_dir: Path, man_dir: Path) -> list[Row]:
    """Every candidate row of the four tasks, deduplicated across the whole mixture."""
    english: dict[Path, str] = {}
    for path in english_pages(man_dir):
        text = man_description(path, english=True)
        if text is not None:
            english[path] = text
    rows: list[Row] = []
    for task, found in (
        ("code", code_rows(python_lib)),
        ("define", define_rows(wordnet_dir)),
        ("summarize", summarize_rows(english)),
        ("translate", translate_rows(man_dir, english)),
    ):
        before = len(rows)
        rows.extend(found)
        print(f"{task}: {len(rows) - before} candidates", file=sys.stderr)
    return dedupe(rows)


def eval_split(rows: list[Row], existing: list[Row], seed: int, per_task: int
               ) -> dict[str, list[Row]]:
    """Held-out evaluation rows per task, spread over subtasks, sharing no id and no user
    or assistant text with ``existing`` (the committed pool and dev rows)."""
    taken = {m["content"] for row in existing for m in row["messages"]}
    ids = {row["id"] for row in existing}
    fresh = [r for r in rows if r["id"] not in ids
             and not ({m["content"] for m in r["messages"]} & taken)]
    out = {}
    for task in TASKS:
        groups: dict[str, list[Row]] = {}
        for row in fresh:
            if row["task"] == task:
                groups.setdefault(row["subtask"], []).append(row)
        rng = random.Random(f"{seed}:{task}:eval")
        for name in sorted(groups):
            rng.shuffle(groups[name])
        quota = allocate(per_task, {k: len(v) for k, v in groups.items()})
        chosen = [r for k in sorted(groups) for r in groups[k][: quota[k]]]
        out[task] = sorted(chosen, key=lambda r: (r["subtask"], r["id"]))
    return out


def read_rows(path: Path) -> list[Row]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_eval(args: argparse.Namespace, rows: list[Row]) -> None:
    existing = read_rows(args.out / "train.jsonl")
    for task in TASKS:
        existing += read_rows(args.out / "targets" / f"{task}.jsonl")
    for task, chosen in eval_split(rows, existing, args.seed, args.eval_per_task).items():
        write_jsonl(args.out / "eval" / f"{task}.jsonl", chosen)
        by_subtask = sorted({r["subtask"] for r in chosen})
        print(f"eval {task}: {len(chosen)} rows over {by_subtask}", file=sys.stderr)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    here = Path(__file__).resolve().parent
    ap.add_argument("--out", type=Path, default=here / "instructions", help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--per-task", type=int, default=DEFAULT_PER_TASK, help="pool rows/task")
    ap.add_argument("--dev-per-task", type=int, default=DEFAULT_DEV_PER_TASK, help="dev rows")
    ap.add_argument("--eval-per-task", type=int, default=DEFAULT_EVAL_PER_TASK,
                    help="held-out evaluation rows per task (with --eval-only)")
    ap.add_argument("--eval-only", action="store_true",
                    help="write only eval/<task>.jsonl, held out from the files in --out")
    ap.add_argument("--python-lib", type=Path, default=PYTHON_LIB, help="Python stdlib folder")
    ap.add_argument("--wordnet", type=Path, default=WORDNET_DIR, help="folder of data.noun ...")
    ap.add_argument("--man", type=Path, default=MAN_DIR, help="man page root (man1, de/, ...)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    rows = collect(args.python_lib, args.wordnet, args.man)
    if args.eval_only:
        write_eval(args, rows)
        return 0
    train: list[Row] = []
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        pool, dev = split_task(task_rows, task, args.seed, args.per_task, args.dev_per_task)
        write_jsonl(args.out / "targets" / f"{task}.jsonl", dev)
        train.extend(pool)
        for name in sorted({r["subtask"] for r in task_rows}):
            counts = [sum(r["subtask"] == name for r in part) for part in (task_rows, pool, dev)]
            print(f"{task}/{name}: unique {counts[0]}, train {counts[1]}, dev {counts[2]}",
                  file=sys.stderr)
    train.sort(key=lambda r: r["id"])
    random.Random(f"{args.seed}:shuffle").shuffle(train)
    write_jsonl(args.out / "train.jsonl", train)
    elapsed = time.perf_counter() - start
    print(f"wrote {len(train)} train rows to {args.out} in {elapsed:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
