"""The shared forward (masking) process: exact counts, maskable positions, and uniformity."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from llada.forward_process import forward_process, sample_mask_ratio

MASK = 99


def test_l_form_masks_exactly_l_maskable_positions():
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(10).repeat(3, 1)
    maskable = torch.zeros(3, 10, dtype=torch.bool)
    maskable[:, 4:] = True  # prompt of 4 never masked
    noisy, m = forward_process(ids, MASK, num_masked=torch.tensor([1, 3, 6]), maskable=maskable, generator=g)
    assert m.sum(1).tolist() == [1, 3, 6]
    assert not m[:, :4].any()
    assert torch.equal(noisy[m], torch.full((10,), MASK))
    assert torch.equal(noisy[~m], ids[~m])


def test_l_form_subsets_are_uniform():
    # every 2-subset of 4 maskable positions should appear with frequency 1/6
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(6000, 5, dtype=torch.long)
    maskable = torch.tensor([False, True, True, True, True])
    _, m = forward_process(ids, MASK, num_masked=2, maskable=maskable, generator=g)
    counts = Counter(tuple(row.nonzero().flatten().tolist()) for row in m)
    assert set(counts) == set(itertools.combinations(range(1, 5), 2))
    for c in counts.values():
        assert abs(c / 6000 - 1 / 6) < 0.02


def test_t_form_rate_and_maskable():
    g = torch.Generator().manual_seed(2)
    ids = torch.zeros(4, 20000, dtype=torch.long)
    p = torch.tensor([0.1, 0.5, 0.9, 1.0])
    maskable = torch.ones(20000, dtype=torch.bool)
    maskable[:100] = False
    _, m = forward_process(ids, MASK, p_mask=p, maskable=maskable, generator=g)
    assert not m[:, :100].any()
    rates = m[:, 100:].float().mean(1)
    assert torch.allclose(rates, p, atol=0.01)


def test_sample_mask_ratio_range():
    t, p = sample_mask_ratio(1000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(p, (1 - 1e-3) * t + 1e-3)
    assert p.min() >= 1e-3 and p.max() <= 1


def test_errors():
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one"):
        forward_process(ids, MASK)
    with pytest.raises(ValueError, match="num_masked"):
        forward_process(ids, MASK, num_masked=6)
    with pytest.raises(ValueError, match="batch, length"):
        forward_process(ids[0], MASK, p_mask=0.5)
