"""Chat records reach a model in its own chat template, with the assistant turns as the
tokens to score (models.lm.render_chat / tokenize); models without a template keep
dataselect's plain format."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import DATA, turn_tokenizer, write_jsonl
from transformers import PreTrainedTokenizerFast

from dataselect import read_corpus
from dataselect.errors import InputError
from dataselect.textspec import CHAT_COLUMN, CHAT_TYPE
from models.lm import model_view, render_chat, rendering, tokenize

# A ChatML-style template written for these tests: a default system turn when none is
# given, an end-of-turn marker after every turn, and a generation prompt.
TURN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|start|>system\nBe helpful.<|end|>\n{% endif %}"
    "{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)
# Rewrites history: earlier assistant turns are shortened, so renderings of a prefix of the
# conversation are not prefixes of the whole rendering.
REWRITING_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] "
    "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'][:3] }}"
    "{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"
)
DROPPING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
)

CONVERSATION = [
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "Seven is prime."},
    {"role": "user", "content": "And an even one?"},
    {"role": "assistant", "content": "Two."},
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer with the turn markers as special tokens."""
    return turn_tokenizer(400, 500, TURN_TEMPLATE)


def _chat_view(conversations: list[list[dict]]) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(len(conversations))],
                     "text": ["unused plain text"] * len(conversations),
                     CHAT_COLUMN: pa.array(conversations, CHAT_TYPE)})


def _scored_text(tokenizer, tokens, row: int) -> str:
    return tokenizer.decode(tokens.input_ids[row][tokens.loss_mask[row]])


def test_spans_are_the_replies_with_their_end_marker(tokenizer) -> None:
    text, spans = render_chat(tokenizer, CONVERSATION)
    assert text.startswith("<|start|>system\nBe helpful.<|end|>\n<|start|>user\nName a prime.")
    assert [text[a:b] for a, b in spans] == ["Seven is prime.<|end|>", "Two.<|end|>"]
    assert text == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)


def test_tokenize_scores_exactly_the_reply_tokens(tokenizer) -> None:
    view = _chat_view([CONVERSATION, CONVERSATION[:2]])
    tokens = tokenize(tokenizer, view, max_length=256)
    assert _scored_text(tokenizer, tokens, 0) == "Seven is prime.<|end|>Two.<|end|>"
    assert _scored_text(tokenizer, tokens, 1) == "Seven is prime.<|end|>"
    # the template's own tokens, not the plain text: the system turn is there
    whole = tokenizer.decode(tokens.input_ids[0][tokens.attention_mask[0].bool()])
    assert whole == render_chat(tokenizer, CONVERSATION)[0]
    # no special tokens added on top of the template's (the rendering starts the row)
    assert tokenizer.decode(tokens.input_ids[1][:1]) == "<|start|>"


def test_without_a_template_the_plain_format_is_used(tokenizer) -> None:
    plain = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer,
                                    pad_token="<pad>")
    assert rendering(plain) == {"format": "plain"}
    path = DATA / "instructions" / "train.jsonl"
    corpus = read_corpus(str(path), text="messages")
    view = corpus.scoring_view(corpus.read_partition(0), response_spans=True).slice(0, 4)
    tokens = tokenize(plain, view, max_length=256)
    for row, record in enumerate(view[CHAT_COLUMN].to_pylist()):
        assert _scored_text(plain, tokens, row) == record[-1]["content"]
        assert plain.decode(tokens.input_ids[row][tokens.attention_mask[row].bool()]) \
            == view["text"][row].as_py()


def test_rendering_names_the_template(tokenizer) -> None:
    described = rendering(tokenizer)
    assert described["format"] == "chat_template"
    other = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer,
                                    pad_token="<pad>")
    other.chat_template = TURN_TEMPLATE.replace("Be helpful.", "Be brief.")
    assert rendering(other)["template_sha256"] != described["template_sha256"]


def test_a_template_that_rewrites_history_scores_the_replies_it_keeps(tokenizer) -> None:
    rewriting = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer,
                                        pad_token="<pad>")
    rewriting.chat_template = REWRITING_TEMPLATE
    text, spans = render_chat(rewriting, CONVERSATION)
    # (the template's newlines after block tags are trimmed, as transformers renders it)
    assert text == "[user] Name a prime.[assistant] Sev[user] And an even one?[assistant] Two."
    # the shortened first reply is not what the model sees: unscored; the header of the
    # last one (no generation prompt in this template) is not part of the reply
    assert [text[a:b] for a, b in spans] == ["Two."]


def test_a_template_that_drops_replies_is_refused(tokenizer) -> None:
    dropping = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer,
                                       pad_token="<pad>")
    dropping.chat_template = DROPPING_TEMPLATE
    with pytest.raises(InputError, match="drops the assistant replies"):
        render_chat(dropping, CONVERSATION)


def test_prompt_completion_pairs_are_a_user_and_an_assistant_turn(tmp_path, tokenizer) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": "a", "q": "Capital of France?", "a": "Paris."},
        {"id": "b", "q": "2+2?", "a": "4"}])
    corpus = read_corpus(str(path), text="q+a")
    view = corpus.scoring_view(corpus.read_partition(0), response_spans=True)
    assert view[CHAT_COLUMN].to_pylist()[1] == [{"role": "user", "content": "2+2?"},
                                               {"role": "assistant", "content": "4"}]
    tokens = tokenize(tokenizer, model_view(view, spans=True), max_length=64)
    assert _scored_text(tokenizer, tokens, 0) == "Paris.<|end|>"
    assert _scored_text(tokenizer, tokens, 1) == "4<|end|>"


def test_chat_column_keeps_role_and_content_only(tmp_path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "a", "messages": [
        {"role": "user", "content": "hi", "name": "x"},
        {"role": "assistant", "content": "yo", "weight": 1}]}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "b", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}])
    views = []
    for path in (a, b):
        corpus = read_corpus(str(path), text="messages")
        views.append(corpus.scoring_view(corpus.read_partition(0), response_spans=True))
    both = pa.concat_tables(views)  # one schema: views of different files concatenate
    assert both[CHAT_COLUMN].type == CHAT_TYPE
    assert both[CHAT_COLUMN].to_pylist()[0] == [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "yo"}]


@pytest.mark.slow
def test_smollm2_scores_each_reply_and_its_end_of_turn(smollm2: str) -> None:
    from models.lm import load_tokenizer

    tok = load_tokenizer(smollm2)
    assert rendering(tok)["format"] == "chat_template"
    corpus = read_corpus(str(DATA / "instructions" / "train.jsonl"), text="messages")
    view = corpus.scoring_view(corpus.read_partition(0), response_spans=True).slice(0, 8)
    records = view[CHAT_COLUMN].to_pylist()
    records[0] = [{"role": "system", "content": "Answer tersely."}, *CONVERSATION]
    view = _chat_view(records)
    tokens = tokenize(tok, view, max_length=512)
    for row, record in enumerate(records):
        replies = "".join(m["content"] + "<|im_end|>" for m in record
                          if m["role"] == "assistant")
        assert _scored_text(tok, tokens, row) == replies
        whole = tok.decode(tokens.input_ids[row][tokens.attention_mask[row].bool()])
        assert whole == tok.apply_chat_template(record, tokenize=False)
    # SmolLM2 adds its own system turn when the record has none
    assert "named SmolLM" in tok.decode(tokens.input_ids[1])
    assert "named SmolLM" not in tok.decode(tokens.input_ids[0])


def test_eval_prompts_end_with_the_templates_generation_prompt(tokenizer) -> None:
    from pipelines.evaluate import split_prompts

    corpus = read_corpus(str(DATA / "instructions" / "eval" / "define.jsonl"), text="messages")
    view = corpus.scoring_view(corpus.read_partition(0), response_spans=True).slice(0, 3)
    prompts, answers = split_prompts(view, tokenizer)
    records = view[CHAT_COLUMN].to_pylist()
    assert answers == [r[1]["content"] for r in records]
    for prompt, record in zip(prompts, records):
        assert prompt.startswith("<|start|>system\nBe helpful.<|end|>\n<|start|>user\n")
        assert prompt.endswith(record[0]["content"] + "<|end|>\n<|start|>assistant\n")
    # without a template: the plain rendering, cut where the reply starts
    plain_prompts, plain_answers = split_prompts(view)
    assert plain_answers == answers
    assert plain_prompts[0] == view["text"][0].as_py()[:len(plain_prompts[0])]
    assert plain_prompts[0].endswith("<|assistant|>\n")


def test_chat_and_plain_rows_in_one_batch_are_refused_for_a_template(tokenizer) -> None:
    view = pa.table({"id": ["a", "b"], "text": ["x", "plain"],
                     CHAT_COLUMN: pa.array([CONVERSATION, None], CHAT_TYPE)})
    with pytest.raises(InputError, match="mixes chat records and plain text"):
        tokenize(tokenizer, view, max_length=64)
