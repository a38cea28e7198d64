"""Chat template, special ids and padding helpers, on a tokenizer built here with `tokenizers`."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from llada.tokenization import (
    SPECIAL_TOKENS,
    SpecialTokenIds,
    apply_chat_template,
    decode_answer,
    encode_chat_batch,
    left_pad,
    next_turn_prompt,
    render_chat,
    special_token_ids,
)


@pytest.fixture(scope="module")
def tok():
    inner = Tokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    inner.train_from_iterator(["hello there, what is 2 + 2? be brief.", "user assistant system"], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=inner, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        mask_token="<|mdm_mask|>",
    )


def test_chat_template_text(tok):
    msgs = [{"role": "system", "content": "be brief "}, {"role": "user", "content": " what is 2 + 2 ?"}]
    expected = (
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nwhat is 2 + 2 ?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_chat(tok, msgs) == expected
    ids = apply_chat_template(tok, msgs)
    assert tok.decode(ids) == expected
    # BOS only before the first message
    assert ids.count(tok.convert_tokens_to_ids("<|startoftext|>")) == 1
    assert ids[0] == tok.convert_tokens_to_ids("<|startoftext|>")


def test_special_ids_from_tokenizer_and_config(tok):
    ids = special_token_ids(tok)
    assert ids.mask == tok.convert_tokens_to_ids("<|mdm_mask|>")
    assert ids.eos == ids.pad == tok.convert_tokens_to_ids("<|endoftext|>")
    assert ids.eot == tok.convert_tokens_to_ids("<|eot_id|>")
    assert ids.start_header == tok.convert_tokens_to_ids("<|start_header_id|>")

    class Cfg:
        mask_token_id, eos_token_id, pad_token_id, bos_token_id = 7, 8, 8, None

    from_config = special_token_ids(None, Cfg())
    assert (from_config.mask, from_config.eos, from_config.pad) == (7, 8, 8)


def test_pad_equal_to_mask_is_refused():
    with pytest.raises(ValueError, match="pad id 5 equals the mask id 5"):
        SpecialTokenIds(mask=5, eos=6, pad=5)


def test_left_pad_and_batch(tok):
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        left_pad([[1], []], pad_id=0)
    batch, am = encode_chat_batch(tok, [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "what is 2 + 2 ?"}]])
    assert batch.shape == am.shape and batch.shape[0] == 2
    assert am[0].sum() < am[1].sum() and am[0, 0] == 0 and batch[0, 0] == special_token_ids(tok).pad


def test_next_turn_prompt_matches_reference_chat(tok):
    ids = special_token_ids(tok)
    first = apply_chat_template(tok, [{"role": "user", "content": "hi"}])
    answer = tok("hello there", add_special_tokens=False)["input_ids"] + [ids.eot] + [ids.eos] * 3
    nxt = next_turn_prompt(tok, first, answer, "what is 2 + 2 ?", eos_id=ids.eos)
    second_turn = apply_chat_template(tok, [{"role": "user", "content": "what is 2 + 2 ?"}])[1:]  # no BOS
    assert nxt == first + answer[:-3] + second_turn
    assert ids.eos not in nxt
    # the template of the full history gives the same ids as the incremental prompt
    full = apply_chat_template(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
                                     {"role": "user", "content": "what is 2 + 2 ?"}])
    assert nxt == full


def test_bad_messages(tok):
    with pytest.raises(ValueError, match="empty message list"):
        apply_chat_template(tok, [])
    with pytest.raises(ValueError, match="message 0"):
        apply_chat_template(tok, [{"content": "x"}])


def test_decode_answer_cuts_at_the_first_eos_or_eot(tok):
    ids = special_token_ids(tok)
    body = tok.encode(" what is 2", add_special_tokens=False)
    assert decode_answer(tok, body + [ids.eot] + body + [ids.eos], ids) == " what is 2"
    assert decode_answer(tok, body + [ids.eos, ids.eos], ids) == " what is 2"
    assert decode_answer(tok, torch.tensor(body), ids) == " what is 2"  # tensors too; nothing to cut
    assert decode_answer(tok, [ids.eos] + body, ids) == ""
    no_eot = SpecialTokenIds(mask=ids.mask, eos=ids.eos, pad=ids.pad)
    assert decode_answer(tok, body + [ids.eos], no_eot) == " what is 2"
