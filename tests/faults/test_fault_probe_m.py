"""Probe round M (issue 28 leftovers): a model folder that asks for more memory than any
machine has, in one step.

A chat template is the folder's code: one expression that would build a huge value
(``'x' * 10**10``, ``'x'.center(10**10)``, ``10 ** (10**10)``, ``'x' | indent(10**10)``,
``lipsum(10**8)``), or a short loop that doubles a string, is refused before the value is
built, as one line naming the folder; real templates render exactly as transformers
renders them. A config.json whose sizes are valid integers but ask for more weights than
this machine's memory (``hidden_size: 2**40``) is refused before any model is built,
naming the folder, the field and the size in GB."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import DATA, turn_tokenizer

from dataselect.errors import InputError

CHAT = [{"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven is prime."}]
FOLDER = "/models/probe-m"


@pytest.fixture(scope="module")
def tokenizer():  # -> PreTrainedTokenizerFast (its template set per test)
    fast = turn_tokenizer(200, 300, "{{ '' }}")
    fast.name_or_path = FOLDER
    return fast


def _render(tokenizer, template: str, chat: list[dict] = CHAT, **options) -> str:
    from models.templates import render_template

    tokenizer.chat_template = template
    return render_template(tokenizer, chat, **options)


# --- one expression that builds a huge value ----------------------------------------------

HUGE = [
    "{{ 'x' * 10**10 }}",
    "{{ [0] * 10**9 }}",
    "{{ 'x'.center(10**10) }}",
    "{{ 'x'.ljust(10**10) }}",
    "{{ 'x'.rjust(10**10) }}",
    "{{ 'x'.zfill(10**10) }}",
    "{{ ('\t' * 1000).expandtabs(10**7) }}",
    "{{ 'x'.encode().center(10**10) }}",
    "{{ 10 ** (10**10) }}",
    "{{ 'x' | center(10**10) }}",
    "{{ 'x' | center(10000000000) }}",  # constant: jinja2 folds it while compiling
    "{{ 'x' | indent(10**10) }}",
    "{{ ('a\nb' * 1000) | indent('y' * 1000000) }}",
    "{{ lipsum(10**8) }}",
    "{{ '%10000000000s' % 'x' }}",
    "{{ '%*s' % (10**10, 'x') }}",
    "{{ '%.10000000000f' | format(1.0) }}",
    "{{ '{:>10000000000}'.format(1) }}",
    "{{ ('x' * 100000).replace('', 'y' * 100000) }}",
    "{{ ('x' * 100000) | replace('', 'y' * 100000) }}",
    "{{ ('y' * 100000).join(['x'] * 100000) }}",
    "{{ (['x' * 1000] * 100000) | join }}",
    "{{ ([1] | batch(10**10, 0)) | list | length }}",
    "{{ ([1] | slice(10**10)) | list | length }}",
    "{{ [1] | tojson(indent=10**10) }}",
    "{{ 'ab' | wordwrap(1, wrapstring='x' * 10**6) }}",
    "{{ [['x' * 100000] * 1000] * 1000 }}",
    # a filter or method that grows its input by a small factor: refused once past the limit
    "{{ ('&' * 900000) | forceescape | length }}",
    "{{ ('\ufb03' * 900000).upper() | length }}",
    # a few steps that double a value: 40 of them are a terabyte
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
    "{% endfor %}{{ ns.n > 1 }}",
    "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s | length }}{% endif %}"
    "{% endmacro %}{{ d('x', 40) }}",
]


@pytest.mark.parametrize("template", HUGE)
def test_one_expression_building_a_huge_value_is_one_line(tokenizer, template: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InputError, match="in one expression") as info:
        _render(tokenizer, template)
    line = str(info.value)
    assert line.startswith(FOLDER) and "\n" not in line, line
    assert "chat template builds" in line and "more than the" in line, line
    # refused before the value is built (minutes, gigabytes), not a speed test
    assert time.perf_counter() - started < 60


def test_the_limit_grows_with_the_conversation(tokenizer) -> None:
    """A value as large as the rendering may write is built; the limit is the output
    budget, which grows with the messages' text."""
    from models.templates import BASE_CHARACTERS, CHARACTERS_PER_CHARACTER

    template = "{{{{ ('x' * {}) | length }}}}".format
    text = sum(len(m["content"]) for m in CHAT)
    limit = BASE_CHARACTERS + CHARACTERS_PER_CHARACTER * text
    assert _render(tokenizer, template(limit)) == str(limit)
    with pytest.raises(InputError, match="in one expression"):
        _render(tokenizer, template(limit + 1))
    long_chat = [{"role": "user", "content": "y" * 200_000}]
    big = BASE_CHARACTERS + 2_000_000
    assert _render(tokenizer, template(big), long_chat) == str(big)


def test_jinja_pow_is_left_associative_so_a_tower_is_small(tokenizer) -> None:
    """``10**10**7`` in jinja2 is ``(10**10)**7``, 10**70, not a ten-million-digit int."""
    assert _render(tokenizer, "{{ 10**10**7 }}") == str(10 ** 70)


SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
# what real templates use: ~ and + concatenation, namespace, filters, tojson with indent,
# string methods, format, slicing, loop variables, macros
BUSY_TEMPLATE = (
    "{% set ns = namespace(sys='', n=0) %}{% macro tag(r) %}<|{{ r | upper }}|>{% endmacro %}"
    "{% if tools %}{{ tools | tojson(indent=4) }}{% endif %}"
    "{% for m in messages %}{% set ns.n = ns.n + m['content'] | length %}"
    "{{ tag(m['role']) ~ ' ' ~ m['content'] | trim | replace('\n', ' ') }}"
    "{{ '%s/%d' % (m['role'], loop.index) }}{{ '{}:{}'.format(loop.index0, loop.length) }}"
    "{{ m['content'].strip().split(' ') | join('_') | center(40) | indent(2) }}"
    "{{ (m['content'] * 2)[:30] | wordwrap(10) }}{{ [m['role']] * 2 }}"
    "{{ m['content'].ljust(20, '.') ~ messages[:loop.index] | map(attribute='role') | list }}"
    "{% endfor %}{{ ns.n }}{{ 2 ** 10 }}{{ messages | tojson }}"
    "{% if add_generation_prompt %}{{ tag('assistant') }}{% endif %}")


def _stock_renderings(tokenizer, template: str, chats: list, **options) -> list[str]:
    """transformers' own rendering, in the stock immutable sandbox."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils import chat_template_utils as utils

    bounded = utils.ImmutableSandboxedEnvironment
    utils.ImmutableSandboxedEnvironment = ImmutableSandboxedEnvironment
    utils._compile_jinja_template.cache_clear()
    try:
        tokenizer.chat_template = template
        return [tokenizer.apply_chat_template(chat, tokenize=False, **options)
                for chat in chats]
    finally:
        utils.ImmutableSandboxedEnvironment = bounded
        utils._compile_jinja_template.cache_clear()


def test_real_templates_render_as_the_stock_sandbox_renders_them(tokenizer) -> None:
    """SmolLM2's template and one using every checked operator and filter, on the first
    400 conversations of the shipped instruction data, with and without a system turn
    and a generation prompt: byte for byte transformers' rendering."""
    from models.templates import _install

    assert _install(), "transformers no longer compiles templates with the bounded class"
    rows = [json.loads(line)["messages"]
            for line in (DATA / "instructions" / "train.jsonl").open()][:400]
    chats = rows + [[{"role": "system", "content": "Answer tersely."}, *r] for r in rows[:50]]
    for template in (SMOLLM2_TEMPLATE, BUSY_TEMPLATE):
        for options in ({}, {"add_generation_prompt": True}):
            stock = _stock_renderings(tokenizer, template, chats, **options)
            ours = [_render(tokenizer, template, chat, **options) for chat in chats]
            assert ours == stock
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    stock = _stock_renderings(tokenizer, BUSY_TEMPLATE, [CHAT], tools=tools)
    assert [_render(tokenizer, BUSY_TEMPLATE, CHAT, tools=tools)] == stock


def test_outside_a_bounded_rendering_nothing_is_limited(tokenizer) -> None:
    """Another caller of apply_chat_template in the process sees the stock sandbox."""
    from models.templates import _install

    _install()
    tokenizer.chat_template = "{{ ('x' * 3000000) | length }}"
    assert tokenizer.apply_chat_template(CHAT, tokenize=False) == "3000000"


def test_a_transformers_that_compiles_templates_otherwise_still_renders(
        tokenizer, monkeypatch, caplog) -> None:
    """If transformers' internals change, templates render with the step and output
    budgets alone, and a warning says the single expressions are not checked."""
    from transformers.utils import chat_template_utils as utils

    from models import templates

    monkeypatch.setattr(templates, "_INSTALLED", None)
    monkeypatch.delattr(utils, "_compile_jinja_template")
    monkeypatch.setattr(utils, "ImmutableSandboxedEnvironment",
                        utils.ImmutableSandboxedEnvironment)
    with caplog.at_level("WARNING", logger="models.templates"):
        assert templates._install() is False
    assert "not size-checked" in caplog.text
    monkeypatch.undo()
    monkeypatch.setattr(templates, "_INSTALLED", False)
    assert _render(tokenizer, SMOLLM2_TEMPLATE).startswith("<|im_start|>system")
    assert _render(tokenizer, "{{ ('x' * 2000000) | length }}") == "2000000"


# --- config.json sizes that no machine can hold --------------------------------------------

SMALL_LLAMA = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 4}


def _model_folder(tmp_path: Path, config: dict) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(("config", "field"), [
    ({**SMALL_LLAMA, "hidden_size": 2**40}, "hidden_size"),
    ({**SMALL_LLAMA, "vocab_size": 10**12}, "vocab_size"),
    ({**SMALL_LLAMA, "num_hidden_layers": 10**7}, "num_hidden_layers"),
    ({**SMALL_LLAMA, "intermediate_size": 10**17}, "intermediate_size"),
    ({"model_type": "llama", "hidden_size": 2**62}, "hidden_size"),
    ({"model_type": "gpt2", "n_embd": 2**40}, "n_embd"),
    ({"model_type": "gpt2", "n_layer": 10**7}, "n_layer"),
])
def test_a_config_larger_than_memory_is_one_line(tmp_path: Path, config: dict,
                                                 field: str) -> None:
    from models.lm import check_model_folder

    folder = _model_folder(tmp_path, config)
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"GB of weights") as info:
        check_model_folder(folder)
    line = str(info.value)
    assert str(folder) in line and f"field '{field}'" in line and "\n" not in line, line
    assert "memory" in line
    # refused before the value is built (minutes, gigabytes), not a speed test
    assert time.perf_counter() - started < 60


def test_the_count_is_exact_for_a_model_that_fits(tmp_path: Path, monkeypatch) -> None:
    """The parameters counted on the meta device, against the model built for real; and
    with memory just below its weights, the same folder is refused (no field at fault:
    every size is a real model's)."""
    import psutil
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    from models.lm import BYTES_PER_PARAMETER, _parameters_on_meta, check_model_folder

    built = CONFIG_MAPPING["llama"](**{k: v for k, v in SMALL_LLAMA.items()
                                       if k != "model_type"})
    count = _parameters_on_meta(built)
    torch.manual_seed(0)
    assert count == sum(p.numel() for p in AutoModelForCausalLM.from_config(built)
                        .parameters())
    folder = _model_folder(tmp_path, SMALL_LLAMA)
    check_model_folder(folder)

    class Memory:
        total = count * BYTES_PER_PARAMETER - 1

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    with pytest.raises(InputError, match=f"about {count:,} parameters") as info:
        check_model_folder(folder)
    assert info.value.field is None


def test_thousands_of_layers_are_not_built_to_count_them(tmp_path: Path) -> None:
    """A tiny model of 100,000 layers fits the estimate; its count stops at
    COUNT_MODULES instead of building every layer on meta."""
    from models.lm import check_model_folder

    config = {**SMALL_LLAMA, "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
              "num_attention_heads": 1, "num_key_value_heads": 1,
              "num_hidden_layers": 100_000}
    from torch.nn.modules.module import register_module_module_registration_hook

    from models.lm import COUNT_MODULES

    registered = []
    hook = register_module_module_registration_hook(lambda *_: registered.append(1))
    try:
        check_model_folder(_model_folder(tmp_path, config))
    finally:
        hook.remove()
    # the count was tried on meta and stopped: 100,000 layers are about a million modules
    assert COUNT_MODULES < len(registered) <= COUNT_MODULES + 1
