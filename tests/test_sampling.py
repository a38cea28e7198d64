"""Reference-exact sampling: token-identical to the reference generate() on the llada-tiny fixture."""

from __future__ import annotations

import pytest
import torch

import sampling
from sampling import SamplerConfig, num_transfer_tokens, scheduled_count

GEN_CASES = ["gen_single_block", "gen_semi_ar", "gen_one_token_per_step", "gen_cfg", "gen_batch"]


def case_args(tiny_expected, name):
    tensors, meta = tiny_expected
    case = meta["cases"][name]
    settings = {k: v for k, v in case.items() if k not in ("prompt", "attention_mask")}
    mask = tensors[case["attention_mask"]] if "attention_mask" in case else None
    return tensors[case["prompt"]], mask, settings, tensors[f"{name}.output"]


@pytest.mark.parametrize("name", GEN_CASES)
def test_reference_cases_token_identical(tiny_model, tiny_expected, name):
    prompt, mask, settings, expected = case_args(tiny_expected, name)
    out = sampling.generate(tiny_model, prompt, mask, **settings)
    assert out.dtype == torch.long
    assert torch.equal(out, expected)


def test_all_fixture_gen_cases_are_covered(tiny_expected):
    _, meta = tiny_expected
    assert sorted(n for n in meta["cases"] if n.startswith("gen_")) == sorted(GEN_CASES)


def test_config_object_equals_keywords(tiny_model, tiny_expected):
    prompt, mask, settings, expected = case_args(tiny_expected, "gen_semi_ar")
    cfg = SamplerConfig(**settings)
    assert torch.equal(sampling.generate(tiny_model, prompt, config=cfg), expected)
    res = sampling.generate(tiny_model, prompt, config=cfg, return_dict=True)
    assert torch.equal(res.sequences, expected) and res.nfe == settings["steps"] == res.steps


def test_cfg_without_attention_mask_equals_all_ones_mask(tiny_model, tiny_expected):
    # the reference crashes here; an all-ones mask is the same computation
    prompt, _, settings, expected = case_args(tiny_expected, "gen_cfg")
    ones = torch.ones_like(prompt)
    assert torch.equal(sampling.generate(tiny_model, prompt, ones, **settings), expected)


def test_num_transfer_tokens_enumeration():
    for s in range(1, 9):
        for m in range(0, 30):
            n = num_transfer_tokens(torch.tensor([m]), s)[0].tolist()
            assert sum(n) == m
            assert n == [m // s + (1 if i < m % s else 0) for i in range(s)]
            # the dynamic form used by the sampler follows the same schedule
            left, dyn = m, []
            for i in range(s):
                k = int(scheduled_count(torch.tensor(left), s - i))
                dyn.append(k)
                left -= k
            assert dyn == n


@pytest.mark.parametrize(
    "settings, word",
    [
        (dict(gen_length=10, block_length=4, steps=5), "block_length"),
        (dict(gen_length=16, block_length=4, steps=6), "number of blocks"),
        (dict(gen_length=8, block_length=8, steps=16), "steps=16"),
        (dict(gen_length=8, block_length=8, steps=8, remasking="lowest"), "remasking"),
        (dict(gen_length=8, block_length=8, steps=8, cache="triple"), "cache"),
        (dict(gen_length=8, block_length=8, steps=8, threshold=0.9, factor=1.0), "threshold"),
        (dict(gen_length=0, block_length=8, steps=8), "gen_length"),
        (dict(gen_length=8, block_length=8, steps=8, temperature=-1.0), "temperature"),
    ],
)
def test_bad_settings_raise_value_error_naming_them(tiny_model, settings, word):
    prompt = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match=word):
        sampling.generate(tiny_model, prompt, **settings)


def test_unknown_setting_is_a_type_error(tiny_model):
    with pytest.raises(TypeError, match="stepz"):
        sampling.generate(tiny_model, torch.tensor([[5]]), stepz=3)


def test_too_long_for_the_model(tiny_model):
    limit = tiny_model.config.max_sequence_length
    with pytest.raises(ValueError, match="max_sequence_length"):
        sampling.generate(tiny_model, torch.tensor([[5, 6]]), steps=1, gen_length=limit, block_length=limit)


def test_pad_equal_to_mask_is_refused(tiny_model):
    mask_id = tiny_model.config.mask_token_id
    prompt = torch.tensor([[mask_id, 5, 6], [7, 8, 9]])
    attn = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="pad"):
        sampling.generate(tiny_model, prompt, attn, steps=4, gen_length=4, block_length=4)
    import copy

    bad = copy.copy(tiny_model.config)
    bad.pad_token_id = mask_id

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_model
            self.config = bad

        def forward(self, **kw):
            return self.inner(**kw)

    with pytest.raises(ValueError, match="pad_token_id"):
        sampling.generate(Wrapped(), prompt[1:], steps=4, gen_length=4, block_length=4)


def test_bench_reference_port_is_the_reference(tiny_model, tiny_expected):
    """bench/sampling.py's naive baseline is the official generate.py: it must reproduce the fixture too."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "sampling.py"
    spec = importlib.util.spec_from_file_location("bench_sampling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    prompt, mask, settings, expected = case_args(tiny_expected, "gen_batch")
    assert torch.equal(bench.reference_generate(tiny_model, prompt, mask, **settings), expected)


def test_config_from_dict_round_trip():
    cfg = SamplerConfig.from_dict({"steps": 8, "gen_length": 16, "block_length": 8, "suppress_tokens": [3, 4],
                                   "cache": "dual", "threshold": 0.9})
    assert cfg.suppress_tokens == (3, 4) and cfg.num_blocks == 2 and cfg.steps_per_block == 4
    assert SamplerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TypeError, match="blocklength"):
        SamplerConfig.from_dict({"blocklength": 4})
    with pytest.raises(ValueError, match="cache"):
        SamplerConfig.from_dict({"cache": "full"})
