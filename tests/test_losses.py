"""The pretraining and SFT losses against hand-computed values, and their invariants."""

from __future__ import annotations

import math

import pytest
import torch

from llada.data import conversation_to_pairs, random_length_cut
from llada.forward_process import forward_process
from llada.losses import (
    add_noise,
    pretraining_loss,
    pretraining_objective,
    response_mask,
    sft_loss,
    sft_objective,
)

MASK = 7  # a stand-in mask id for these unit tests (the functions take it as an argument)


def _log_softmax_at(row: list[float], target: int) -> float:
    """-log softmax(row)[target], written out by hand."""
    z = math.log(sum(math.exp(v) for v in row))
    return z - row[target]


LOGITS = torch.tensor(
    [
        [[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 3.0]],
        [[0.0, 0.0, 0.0, 0.0], [-2.0, 1.0, 0.5, 0.0], [0.3, 0.2, 0.1, 0.0]],
    ]
)
TARGETS = torch.tensor([[0, 2, 3], [1, 1, 0]])
IS_MASKED = torch.tensor([[True, False, True], [False, True, True]])
P_MASK = torch.tensor([0.5, 0.25])


def test_pretraining_loss_hand_computed():
    # row 0: positions 0 and 2 masked, p = 0.5; row 1: positions 1 and 2 masked, p = 0.25; B * L = 6
    ce00 = _log_softmax_at([2.0, 0.0, -1.0, 0.5], 0)
    ce02 = _log_softmax_at([1.0, 1.0, 1.0, 3.0], 3)
    ce11 = _log_softmax_at([-2.0, 1.0, 0.5, 0.0], 1)
    ce12 = _log_softmax_at([0.3, 0.2, 0.1, 0.0], 0)
    expected = ((ce00 + ce02) / 0.5 + (ce11 + ce12) / 0.25) / 6
    got = pretraining_loss(LOGITS, TARGETS, IS_MASKED, P_MASK)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_sft_loss_hand_computed():
    # the same masked positions; answer lengths 2 and 3 (row 0: prompt of 1 token, row 1: no prompt)
    ce00 = _log_softmax_at([2.0, 0.0, -1.0, 0.5], 0)
    ce02 = _log_softmax_at([1.0, 1.0, 1.0, 3.0], 3)
    ce11 = _log_softmax_at([-2.0, 1.0, 0.5, 0.0], 1)
    ce12 = _log_softmax_at([0.3, 0.2, 0.1, 0.0], 0)
    expected = (((ce00 + ce02) / 0.5) / 2 + ((ce11 + ce12) / 0.25) / 3) / 2
    got = sft_loss(LOGITS, TARGETS, IS_MASKED, P_MASK, torch.tensor([2, 3]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_losses_ignore_unmasked_positions_and_reject_bad_shapes():
    changed = LOGITS.clone()
    changed[0, 1] = torch.tensor([9.0, -9.0, 3.0, 1.0])  # an unmasked position: no effect
    assert pretraining_loss(changed, TARGETS, IS_MASKED, P_MASK) == pretraining_loss(LOGITS, TARGETS, IS_MASKED, P_MASK)
    with pytest.raises(ValueError, match="must agree"):
        pretraining_loss(LOGITS[:, :2], TARGETS, IS_MASKED, P_MASK)
    with pytest.raises(ValueError, match="positive answer length"):
        sft_loss(LOGITS, TARGETS, IS_MASKED, P_MASK, torch.tensor([2, 0]))


class FixedLogits(torch.nn.Module):
    """A stand-in mask predictor: the same logits table for every input (monkeypatched model output)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.seen = None

    def forward(self, input_ids, attention_mask=None):
        self.seen = input_ids.clone()
        self.attention_mask = attention_mask
        return type("Out", (), {"logits": self.logits[:, : input_ids.shape[1]]})()


def test_pretraining_objective_uses_the_shared_forward_process():
    model = FixedLogits(LOGITS)
    gens = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    out = pretraining_objective(model, TARGETS, mask_token_id=MASK, eps=1e-3, generator=gens)
    # redraw by hand: per row t ~ U(0,1), p = (1 - eps) t + eps, then forward_process with that generator
    expected, masks = 0.0, []
    for b, seed in enumerate((11, 12)):
        g = torch.Generator().manual_seed(seed)
        t = torch.rand(1, generator=g)
        p = (1 - 1e-3) * t + 1e-3
        noisy, m = forward_process(TARGETS[b: b + 1], MASK, p_mask=p, generator=g)
        masks.append(m)
        for i in range(3):
            if m[0, i]:
                expected += _log_softmax_at(LOGITS[b, i].tolist(), int(TARGETS[b, i])) / float(p)
    expected /= 6
    assert torch.equal(model.seen == MASK, torch.cat(masks))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.num_masked == int(torch.cat(masks).sum())


def test_sft_objective_never_masks_the_prompt_and_counts_padding_as_answer():
    eos = 5
    ids = torch.tensor([[1, 2, 3, 4, eos, eos], [1, 2, 3, 4, 6, eos]])
    prompt_lengths = torch.tensor([3, 2])
    logits = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))
    model = FixedLogits(logits)
    for seed in range(40):
        gens = [torch.Generator().manual_seed(100 * seed + b) for b in range(2)]
        out = sft_objective(model, ids, prompt_lengths, mask_token_id=MASK, generator=gens)
        masked = model.seen == MASK
        assert not masked[0, :3].any() and not masked[1, :2].any()
        # hand computation with the same draws: answer lengths 3 and 4 (EOS padding included)
        total = 0.0
        for b in range(2):
            g = torch.Generator().manual_seed(100 * seed + b)
            p = float((1 - 1e-3) * torch.rand(1, generator=g) + 1e-3)
            row = sum(_log_softmax_at(logits[b, i].tolist(), int(ids[b, i])) for i in range(6) if masked[b, i])
            total += row / p / (6 - int(prompt_lengths[b]))
        assert out.loss.item() == pytest.approx(total / 2, rel=1e-5, abs=1e-7)
    # EOS padding positions do get masked and trained on
    hits = 0
    for seed in range(50):
        gens = [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1000)]
        sft_objective(model, ids, prompt_lengths, mask_token_id=MASK, generator=gens)
        hits += int((model.seen[0, 4:] == MASK).any())
    assert hits > 0


@pytest.mark.parametrize("objective", ["pretrain", "sft"])
def test_loss_is_unbiased_for_a_uniform_predictor(objective):
    """E[1[masked] / p_mask] = 1 per (maskable) token, so a uniform predictor has expected loss log V."""
    V, B, L = 6, 64, 10
    model = FixedLogits(torch.zeros(B, L, V))
    ids = torch.randint(0, V - 1, (B, L), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    values = []
    for _ in range(200):
        if objective == "pretrain":
            values.append(pretraining_objective(model, ids, mask_token_id=V - 1, generator=g).loss.item())
        else:
            values.append(sft_objective(model, ids, torch.full((B,), 4), mask_token_id=V - 1, generator=g).loss.item())
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 / len(values) ** 0.5
    assert abs(mean - math.log(V)) < 5 * sd + 1e-3, (mean, math.log(V), sd)


def test_add_noise_per_row_generators_do_not_depend_on_the_batch():
    ids = torch.arange(40).reshape(4, 10) % 6
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6, 7, 8)]  # noqa: E731
    whole = add_noise(ids, MASK, generator=gens())
    halves = [add_noise(ids[i: i + 2], MASK, generator=gens()[i: i + 2]) for i in (0, 2)]
    assert torch.equal(whole.noisy_ids, torch.cat([h.noisy_ids for h in halves]))
    assert torch.equal(whole.p_mask, torch.cat([h.p_mask for h in halves]))
    assert bool((whole.p_mask >= 1e-3).all()) and bool((whole.p_mask <= 1.0).all())
    with pytest.raises(ValueError, match="generators"):
        add_noise(ids, MASK, generator=gens()[:3])


def test_response_mask():
    m = response_mask(torch.tensor([0, 2, 4]), 4)
    assert m.tolist() == [[True] * 4, [False, False, True, True], [False] * 4]


def test_multi_turn_gives_one_pair_per_assistant_turn_with_full_history():
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]
    pairs = conversation_to_pairs(msgs)
    assert [(len(h), a["content"]) for h, a in pairs] == [(2, "a1"), (4, "a2")]
    assert pairs[1][0] == msgs[:4]


def test_random_length_cut():
    ids = torch.arange(50).reshape(2, 25)
    assert torch.equal(random_length_cut(ids, probability=0.0, generator=torch.Generator().manual_seed(0)), ids)
    lengths = set()
    for s in range(200):
        cut = random_length_cut(ids, probability=1.0, generator=torch.Generator().manual_seed(s))
        assert 1 <= cut.shape[1] <= 25 and torch.equal(cut, ids[:, : cut.shape[1]])
        lengths.add(cut.shape[1])
    assert len(lengths) > 15  # uniform over 1..L
    hits = sum(random_length_cut(ids, probability=0.01, generator=torch.Generator().manual_seed(s)).shape[1] < 25
               for s in range(5000))
    assert 20 <= hits <= 85  # about 1% of 5000 (a cut to the full length 25 counts as no cut)


def test_sft_objective_left_padded_prompts():
    """Left-padded prompt (the sampler's layout): the padding is inside the prompt region, never masked, and the
    attention mask reaches the model; the answer length is the fixed response region."""
    eos = 5
    ids = torch.tensor([[eos, eos, 1, 2, 3, eos, eos], [1, 2, 1, 2, 4, 6, eos]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    logits = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(3))
    model = FixedLogits(logits)
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    out = sft_objective(model, ids, torch.tensor([4, 4]), mask_token_id=MASK, generator=gens, attention_mask=attention)
    assert torch.equal(model.attention_mask, attention)
    assert not bool((model.seen[:, :4] == MASK).any())
    total = 0.0
    for b, seed in enumerate((1, 2)):
        p = float((1 - 1e-3) * torch.rand(1, generator=torch.Generator().manual_seed(seed)) + 1e-3)
        total += sum(_log_softmax_at(logits[b, i].tolist(), int(ids[b, i])) for i in range(4, 7)
                     if model.seen[b, i] == MASK) / p / 3
    assert out.loss.item() == pytest.approx(total / 2, rel=1e-5, abs=1e-7)
