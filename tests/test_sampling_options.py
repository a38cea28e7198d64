"""Sampler options against exact ground truth: a table denoiser with known logits, embeddings, streaming."""

from __future__ import annotations

import math

import pytest
import torch

import sampling
from sampling import (
    Denoiser,
    DenoiserOutput,
    entropy_remasking,
    factor_count,
    gumbel_max_sample,
    low_confidence_remasking,
    suppress_eos_eot_confidence,
    threshold_count,
    topk_margin_remasking,
)

V, MASK, EOS, EOT, PAD = 10, 9, 8, 7, 8


class TableDenoiser(Denoiser):
    """Logits depend only on the absolute position: table[pos] (V,). No cache support needed."""

    def __init__(self, table: torch.Tensor):
        self.table = table.float()
        self.mask_token_id, self.eos_token_id, self.pad_token_id = MASK, EOS, PAD
        self.max_sequence_length = 64
        self.calls = 0

    def __call__(self, x, attention_mask=None, *, start=0, past_key_values=None, use_cache=False):
        self.calls += 1
        B, L = x.shape
        logits = self.table[start:start + L].expand(B, L, V).clone()
        kv = [(torch.zeros(B, 1, start + L, 2), torch.zeros(B, 1, start + L, 2))] if use_cache else None
        return DenoiserOutput(logits=logits, past_key_values=kv)


def peaked(tokens, strengths):
    """A table whose row i has argmax tokens[i] with logit strengths[i] over zeros."""
    table = torch.zeros(len(tokens), V)
    for i, (t, s) in enumerate(zip(tokens, strengths)):
        table[i, t] = s
    return table


def commit_order(events, P):
    """Positions (relative to the generation start) in the order they were committed."""
    order = []
    for ev in events:
        pos = ev.transferred[0].nonzero().flatten().tolist()
        order.append(sorted(p - P for p in pos))
    return order


def test_low_confidence_commits_most_confident_first():
    P = 2
    strengths = [0, 0, 1.0, 5.0, 3.0, 2.0]
    den = TableDenoiser(peaked([0, 0, 1, 2, 3, 4], strengths))
    events = list(sampling.stream(den, torch.tensor([[0, 0]]), steps=4, gen_length=4, block_length=4))
    assert commit_order(events, P) == [[1], [2], [3], [0]]
    assert events[-1].x[0, P:].tolist() == [1, 2, 3, 4]
    # confidences reported are the model probabilities of the committed tokens
    p = torch.softmax(torch.tensor([5.0] + [0.0] * (V - 1)), 0)[0]
    assert math.isclose(float(events[0].confidence[0, P + 1]), float(p), rel_tol=1e-6)
    assert torch.isnan(events[0].confidence[0, P]).item()


def test_suppress_tokens_and_logits_eos_inf():
    den = TableDenoiser(peaked([0, 0, EOS, 3, 3, EOS], [0, 0, 4, 4, 4, 4]))
    prompt = torch.tensor([[0, 0]])
    plain = sampling.generate(den, prompt, steps=4, gen_length=4, block_length=4)
    assert plain[0, 2:].tolist() == [EOS, 3, 3, EOS]
    no_eos = sampling.generate(den, prompt, steps=4, gen_length=4, block_length=4, logits_eos_inf=True)
    # EOS banned: the argmax of the rest is token 0 (all other logits tie at 0: argmax takes the first)
    assert no_eos[0, 2:].tolist() == [0, 3, 3, 0]
    sup = sampling.generate(den, prompt, steps=4, gen_length=4, block_length=4, suppress_tokens=[3, 0])
    assert sup[0, 2:].tolist() == [EOS, 1, 1, EOS]


@pytest.mark.parametrize("temperature", [0.0, 0.05])
def test_eos_eot_confidence_suppression_commits_them_last(temperature):
    # EOS / EoT are the most confident candidates; with suppression they are committed last, also at T > 0
    den = TableDenoiser(peaked([0, 0, EOS, 1, EOT, 2], [0, 0, 12, 6, 10, 7]))
    prompt = torch.tensor([[0, 0]])
    gen = torch.Generator().manual_seed(0)
    plain = list(sampling.stream(den, prompt, steps=4, gen_length=4, block_length=4, temperature=temperature,
                                 eot_token_id=EOT, generator=gen))
    assert commit_order(plain, 2) == [[0], [2], [3], [1]]
    sup = list(sampling.stream(den, prompt, steps=4, gen_length=4, block_length=4, temperature=temperature,
                               eot_token_id=EOT, confidence_eos_eot_inf=True, generator=gen))
    order = commit_order(sup, 2)
    assert order[:2] == [[3], [1]] and sorted(order[2] + order[3]) == [0, 2]
    assert sup[-1].x[0, 2:].tolist() == [EOS, 1, EOT, 2]


def test_margin_and_entropy_orders():
    # position a: top-2 = (3, 3) -> tiny margin, but the most probable top-1 among a/b? build explicit rows
    table = torch.full((5, V), -10.0)
    table[2, 1], table[2, 2] = 5.0, 5.0  # two equally likely tokens: margin 0, high entropy ~ log 2
    table[3, 3] = 2.0  # one preferred token, rest flat: moderate margin
    table[4, 4] = 6.0  # very peaked
    den = TableDenoiser(table)
    prompt = torch.tensor([[0, 0]])
    ev = list(sampling.stream(den, prompt, steps=3, gen_length=3, block_length=3, remasking="topk_margin"))
    assert commit_order(ev, 2) == [[2], [1], [0]]
    ev = list(sampling.stream(den, prompt, steps=3, gen_length=3, block_length=3, remasking="entropy"))
    # entropy: peaked row lowest; row 3 (one at +2 over 9 flat at -10) is nearly certain too; row 2 ~ log 2
    h = [-float(entropy_remasking(table[i], None)) for i in (2, 3, 4)]
    expected = [sorted(range(3), key=lambda i: h[i])[j] for j in range(3)]
    assert [o[0] for o in commit_order(ev, 2)] == expected


def test_rule_functions_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    p = torch.softmax(logits, -1)
    cand = torch.tensor([1, 2])
    assert torch.allclose(low_confidence_remasking(logits, cand), torch.stack([p[0, 1], p[1, 2]]))
    assert torch.allclose(topk_margin_remasking(logits, cand), torch.tensor([p[0, 0] - p[0, 1], 0.0]))
    assert torch.allclose(entropy_remasking(logits, cand), (p * p.log()).sum(-1))
    conf = torch.tensor([[0.9, 0.2, 0.8]])
    assert suppress_eos_eot_confidence(conf, torch.tensor([[EOS, 1, EOT]]), [EOS, EOT])[0].tolist()[1] == pytest.approx(0.2)
    assert suppress_eos_eot_confidence(conf, torch.tensor([[EOS, 1, EOT]]), [EOS, EOT])[0, 0] < -1e30
    assert threshold_count(conf, 0.5).tolist() == [2] and threshold_count(conf, 1.0).tolist() == [0]


def test_factor_count_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        n = int(torch.randint(1, 9, (1,), generator=g))
        c = torch.rand(1, n, generator=g) ** 0.3
        f = float(torch.rand(1, generator=g)) * 3
        s = sorted(c[0].tolist(), reverse=True)
        best = 0
        for m in range(1, n + 1):
            if all((i + 1) * (1 - s[i - 1]) < f for i in range(1, m + 1)):
                best = m
        assert int(factor_count(c, f)) == best


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_gumbel_max_samples_the_softmax(temperature):
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    g = torch.Generator().manual_seed(0)
    n = 40000
    draws = gumbel_max_sample(logits.expand(n, 4), temperature, g)
    freq = torch.bincount(draws, minlength=4).double() / n
    want = torch.softmax(logits.double() / temperature, 0)
    assert torch.allclose(freq, want, atol=0.01)
    assert torch.equal(gumbel_max_sample(logits.expand(3, 4), 0.0), torch.zeros(3, dtype=torch.long))


def test_random_remasking_is_seeded_and_uniform():
    den = TableDenoiser(peaked([0, 0, 1, 2, 3, 4, 5, 6], [0, 0, 9, 8, 7, 6, 5, 4]))
    prompt = torch.tensor([[0, 0]])
    orders = []
    for seed in (0, 0, 1):
        g = torch.Generator().manual_seed(seed)
        orders.append(commit_order(list(sampling.stream(den, prompt, steps=6, gen_length=6, block_length=6,
                                                        remasking="random", generator=g)), 2))
    assert orders[0] == orders[1]
    firsts = []
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        firsts.append(commit_order(list(sampling.stream(den, prompt, steps=6, gen_length=6, block_length=6,
                                                        remasking="random", generator=g)), 2)[0][0])
    counts = torch.bincount(torch.tensor(firsts), minlength=6)
    assert counts.min() > 25  # uniform: 50 expected per position


def test_stream_events_cover_generation_and_match_generate(tiny_model, tiny_expected):
    tensors, meta = tiny_expected
    case = meta["cases"]["gen_semi_ar"]
    settings = {k: v for k, v in case.items() if k != "prompt"}
    prompt = tensors["gen.prompt"]
    P = prompt.shape[1]
    events, seen = [], []
    for ev in sampling.stream(tiny_model, prompt, **settings):
        events.append((ev.block, ev.step, ev.nfe))
        seen.append(ev.transferred.clone())
        conf = ev.confidence[ev.transferred]
        assert bool(((conf > 0) & (conf <= 1)).all())
        assert bool(torch.isnan(ev.confidence[~ev.transferred]).all())
        last = ev.x.clone()
    assert len(events) == settings["steps"]
    assert events[0] == (0, 0, 1) and events[-1][0] == settings["gen_length"] // settings["block_length"] - 1
    union = torch.stack(seen).sum(0)
    assert union[0, :P].sum() == 0 and bool((union[0, P:] == 1).all())  # every generated position exactly once
    assert torch.equal(last, tensors["gen_semi_ar.output"])
    calls = []
    sampling.generate(tiny_model, prompt, callback=lambda e: calls.append(e.step), **settings)
    assert len(calls) == settings["steps"]


@pytest.mark.parametrize("name", ["gen_single_block", "gen_cfg", "gen_batch"])
def test_inputs_embeds_equal_ids(tiny_model, tiny_expected, name):
    tensors, meta = tiny_expected
    case = meta["cases"][name]
    settings = {k: v for k, v in case.items() if k not in ("prompt", "attention_mask")}
    prompt = tensors[case["prompt"]]
    mask = tensors[case["attention_mask"]] if "attention_mask" in case else None
    embeds = tiny_model.get_input_embeddings()(prompt)
    out = sampling.generate(tiny_model, inputs_embeds=embeds, attention_mask=mask, **settings)
    assert out.shape == (prompt.shape[0], settings["gen_length"])
    assert torch.equal(out, tensors[f"{name}.output"][:, prompt.shape[1]:])


def test_embeddings_denoiser_feeds_mask_embedding_at_masked_prompt(tiny_model):
    emb = tiny_model.get_input_embeddings()
    prompt_embeds = torch.randn(1, 3, emb.weight.shape[1])
    den = sampling.TokenDenoiser(tiny_model).with_prompt_embeds(prompt_embeds)
    mask_id = tiny_model.config.mask_token_id
    x = torch.tensor([[den.placeholder_id(), mask_id, den.placeholder_id(), 42, mask_id]])
    fed = den.embed(x, 0)
    assert torch.equal(fed[0, 0], prompt_embeds[0, 0]) and torch.equal(fed[0, 2], prompt_embeds[0, 2])
    assert torch.equal(fed[0, 1], emb.weight[mask_id]) and torch.equal(fed[0, 4], emb.weight[mask_id])
    assert torch.equal(fed[0, 3], emb.weight[42])
    assert torch.equal(den.embed(x[:, 2:], 2)[0, 0], prompt_embeds[0, 2])
