"""Small checkpoints with a tokenizer, built on the fly for tests that need text in and text out.

The reference fixture has no tokenizer; these random-weight models do (byte-level BPE with LLaDA's
special tokens and the Instruct chat template), in the Hub layout.
"""

from __future__ import annotations

from pathlib import Path

import torch


def make_tiny_chat_checkpoint(folder: Path, *, seed: int = 0, d_model: int = 64, n_layers: int = 2,
                              max_sequence_length: int = 512) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llada import LLaDAConfig, LLaDAModelLM
    from llada.tokenization import LLADA_CHAT_TEMPLATE, SPECIAL_TOKENS

    folder = Path(folder)
    inner = Tokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["hello there, what is 2 + 2? the answer is 4.", "reverse the word cat: tac", "user assistant system"]
    inner.train_from_iterator(corpus * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", mask_token="<|mdm_mask|>")
    tok.chat_template = LLADA_CHAT_TEMPLATE
    vocab = len(tok)
    torch.manual_seed(seed)
    cfg = LLaDAConfig(d_model=d_model, n_heads=4, n_layers=n_layers, mlp_hidden_size=2 * d_model, vocab_size=vocab,
                      embedding_size=vocab, max_sequence_length=max_sequence_length,
                      mask_token_id=tok.convert_tokens_to_ids("<|mdm_mask|>"), eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    LLaDAModelLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
