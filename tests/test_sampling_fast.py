"""Fast decoding (Fast-dLLM): parallel commits, KV caches, early stop, NFE, batch invariance."""

from __future__ import annotations

import pytest
import torch

import sampling
from sampling.generate import _prepare, _resolve_config

from test_sampling import case_args
from test_sampling_options import EOS, TableDenoiser, peaked


@pytest.mark.parametrize("name", ["gen_semi_ar", "gen_cfg", "gen_batch"])
def test_threshold_one_without_cache_is_exact(tiny_model, tiny_expected, name):
    prompt, mask, settings, expected = case_args(tiny_expected, name)
    res = sampling.generate(tiny_model, prompt, mask, threshold=1.0, return_dict=True, **settings)
    assert torch.equal(res.sequences, expected) and res.nfe == settings["steps"]


@pytest.mark.parametrize("name, cache", [("gen_semi_ar", "prefix"), ("gen_cfg", "dual"), ("gen_batch", "dual")])
def test_caches_refreshed_every_step_are_exact(tiny_model, tiny_expected, name, cache):
    prompt, mask, settings, expected = case_args(tiny_expected, name)
    out = sampling.generate(tiny_model, prompt, mask, cache=cache, cache_refresh_interval=1, **settings)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_cached_call_reproduces_full_forward(tiny_model, tiny_expected, cache, cfg_scale):
    """Right after a refresh, the cached (prefix / dual) call gives the full forward's block logits:
    positions, key order and the padded keys of a left-padded batch are handled correctly."""
    tensors, _ = tiny_expected
    prompt, mask = tensors["gen_batch.prompt"], tensors["gen_batch.attention_mask"]
    cfg = _resolve_config(None, dict(steps=4, gen_length=16, block_length=4, cache=cache, cfg_scale=cfg_scale))
    sampler, _ = _prepare(tiny_model, prompt, mask, None, cfg, None)
    # put some decoded tokens in the first blocks so the prefix is not trivially masks
    sampler.x[:, 12:18] = torch.arange(100, 112).view(2, 6)
    bs, be = 12 + 8, 12 + 12
    full = sampler.block_logits(bs, be, step=0)
    cached = sampler.block_logits(bs, be, step=1)
    assert sampler.nfe == 2
    assert torch.allclose(full, cached, atol=1e-4, rtol=1e-4)
    assert torch.equal(full.argmax(-1), cached.argmax(-1))


@pytest.mark.parametrize("fast", [dict(threshold=0.0), dict(threshold=0.3), dict(factor=2.0)])
def test_parallel_decoding_commits_at_least_one_and_fewer_calls(tiny_model, tiny_expected, fast):
    prompt, mask, settings, _ = case_args(tiny_expected, "gen_batch")
    settings = dict(settings, steps=settings["gen_length"])  # one token per step at minimum
    counts = []
    res = sampling.generate(tiny_model, prompt, mask, return_dict=True,
                            callback=lambda e: counts.append(e.transferred.sum(-1)), **fast, **settings)
    mask_id = tiny_model.config.mask_token_id
    assert not bool((res.sequences == mask_id).any())
    per_step = torch.stack(counts)
    assert bool((per_step.sum(0) == settings["gen_length"]).all())
    assert res.nfe == len(counts) <= settings["steps"]
    if fast.get("threshold") == 0.0:  # everything passes: one call per block
        assert res.nfe == settings["gen_length"] // settings["block_length"]
        assert bool((per_step == settings["block_length"]).all())


def test_threshold_commits_exactly_what_passes():
    # confidences of the block: 0.99..., 0.9..., low; threshold 0.8 commits the first two at step 0
    den = TableDenoiser(peaked([0, 0, 1, 2, 3, 4], [0, 0, 9, 5, 0.5, 0.2]))
    p = torch.softmax(torch.tensor([5.0] + [0.0] * 9), 0)[0]
    assert 0.9 < p < 0.99
    events = list(sampling.stream(den, torch.tensor([[0, 0]]), steps=4, gen_length=4, block_length=4, threshold=0.8))
    assert [ev.transferred[0, 2:].nonzero().flatten().tolist() for ev in events] == [[0, 1], [2], [3]]
    assert events[-1].nfe == 3 == den.calls


def test_early_stop_after_eos_block():
    den = TableDenoiser(peaked([0, 0] + [5, EOS, EOS, EOS] + [EOS] * 8, [0, 0] + [3] * 12))
    res = sampling.generate(den, torch.tensor([[0, 0]]), steps=12, gen_length=12, block_length=4,
                            early_stop=True, return_dict=True)
    assert res.nfe == 4 and res.sequences[0, 2:].tolist() == [5] + [EOS] * 11
    # exact run: same tokens, three times the calls
    exact = sampling.generate(den, torch.tensor([[0, 0]]), steps=12, gen_length=12, block_length=4, return_dict=True)
    assert exact.nfe == 12 and torch.equal(exact.sequences, res.sequences)
    # a token after the EOS: no early stop
    den2 = TableDenoiser(peaked([0, 0] + [EOS, 5, EOS, EOS] + [EOS] * 8, [0, 0] + [3] * 12))
    res2 = sampling.generate(den2, torch.tensor([[0, 0]]), steps=12, gen_length=12, block_length=4,
                             early_stop=True, return_dict=True)
    assert res2.nfe == 12


@pytest.mark.parametrize("fast", [dict(), dict(threshold=0.9, cache="dual"), dict(cache="prefix")])
def test_batch_invariance(tiny_model, tiny_expected, fast):
    """A prompt sampled alone and inside a left-padded batch gives the same tokens at T = 0."""
    tensors, _ = tiny_expected
    prompt, mask = tensors["gen_batch.prompt"], tensors["gen_batch.attention_mask"]
    settings = dict(steps=8, gen_length=16, block_length=8, **fast)
    batch = sampling.generate(tiny_model, prompt, mask, **settings)
    for row in range(prompt.shape[0]):
        alone_prompt = prompt[row:row + 1, mask[row].bool()]
        alone = sampling.generate(tiny_model, alone_prompt, **settings)
        assert torch.equal(alone[0, alone_prompt.shape[1]:], batch[row, prompt.shape[1]:])
