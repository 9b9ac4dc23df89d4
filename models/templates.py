"""A model folder's chat template, rendered as the untrusted input it is.

The template (``chat_template`` in tokenizer_config.json, or a .jinja file) is code that
came with the folder. transformers already renders it in jinja2's immutable sandbox, so it
cannot reach Python's internals; two things remain, and both are handled here, around
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
  message. (One expression that builds a huge string at once, ``'x' * 10**10``, is a
  single step: the process's memory limit is what stops it.)
"""

from __future__ import annotations

import sys
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


def render_template(tokenizer: Any, turns: list[dict[str, Any]], **options: Any) -> str:
    """``tokenizer.apply_chat_template(turns, tokenize=False, **options)``, bounded, with
    whatever the template raises told as one line naming the model folder (an error of
    dataselect's own, and running out of memory, stay themselves)."""
    text = sum(len(str(turn.get("content", ""))) for turn in turns)
    guard = _StepGuard(BASE_STEPS + STEPS_PER_MESSAGE * len(turns),
                       BASE_CHARACTERS + CHARACTERS_PER_CHARACTER * text)
    previous = sys.gettrace()
    sys.settrace(guard.call)
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, **options)
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


def _folder(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or "model")


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else "")[:200]
