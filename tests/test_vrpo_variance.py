"""Variance diagnostics: a larger budget and antithetic sampling reduce the score variance as the LLaDA 1.5
theory says, on a small model whose policy is a slightly perturbed copy of the reference. (The finer order
between allocations of the same budget, 8x1 < 2x2 < 1x4, depends on the model's V_t / V_yt split and is
measured on the embedded model in bench/RESULTS.md.)"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import llada
from alignment.variance import VarianceSetting, measure_variance, to_markdown

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import make_tiny_chat_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = make_tiny_chat_checkpoint(tmp_path_factory.mktemp("var"), d_model=32, n_layers=1)
    reference = llada.LLaDAModelLM.from_pretrained(str(path)).eval()
    policy = copy.deepcopy(reference)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.002 * torch.randn(p.shape, generator=g))
    return policy, reference


def _pairs():
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 300, (6,), generator=g).tolist(), torch.randint(0, 300, (12,), generator=g).tolist(),
             torch.randint(0, 300, (12,), generator=g).tolist()) for _ in range(3)]


def test_setting_parse():
    assert VarianceSetting.parse("4x1") == VarianceSetting(4, 1, True)
    assert VarianceSetting.parse("2x2:noanti") == VarianceSetting(2, 2, False)
    with pytest.raises(ValueError, match="expected N_TxN_YT"):
        VarianceSetting.parse("four")


def test_policy_equal_reference_has_zero_antithetic_variance(models):
    _, reference = models
    rows = measure_variance(reference, copy.deepcopy(reference), _pairs()[:1], [VarianceSetting(2, 1)], repeats=4,
                            with_grad=False, progress=False)
    assert rows[0].var_score == 0.0 and rows[0].mean_score == 0.0


def test_variance_orders_as_theory(models):
    policy, reference = models
    settings = [VarianceSetting(8, 1), VarianceSetting(1, 1), VarianceSetting(8, 1, False)]
    rows = {r.setting.label: r for r in measure_variance(policy, reference, _pairs()[:2], settings, repeats=16,
                                                         with_grad=True, progress=False)}
    table = to_markdown(list(rows.values()))
    # n = 8 samples: about 8x less variance than one sample
    assert 3 * rows["8x1"].var_score < rows["1x1"].var_score, table
    assert rows["8x1"].var_grad < rows["1x1"].var_grad, table
    # shared draws: the policy-reference ELBO differences are far less noisy than with independent draws
    assert rows["8x1 (no antithetic)"].var_score > 10 * rows["8x1"].var_score, table


def _short_pairs():
    g = torch.Generator().manual_seed(2)
    return [(torch.randint(0, 300, (5,), generator=g).tolist(), torch.randint(0, 300, (3,), generator=g).tolist(),
             torch.randint(0, 300, (3,), generator=g).tolist()) for _ in range(2)]


def _draw_law(masks):
    """(mask index, probability) of one ELBO row: l ~ U{1..L}, then S uniform of size l."""
    from math import comb

    L = masks.shape[1]
    return [(i, 1.0 / (L * comb(L, int(m.sum())))) for i, m in enumerate(masks)]


def _brute_force_var(values_pol, values_ref, masks, n_t, n_yt, antithetic):
    """Var of one ELBO-difference estimate by summing over every joint draw (n_t * n_yt <= 2 rows)."""
    import itertools

    L = masks.shape[1]
    size = masks.sum(dim=1).to(torch.float64)
    vp, vr = values_pol * (L / size), values_ref * (L / size)
    law = _draw_law(masks)
    outcomes = []  # (value, probability) of the estimate of one model, as a list over row draws
    if (n_t, n_yt) == (1, 1):
        rows = [((i,), p) for i, p in law]
    elif (n_t, n_yt) == (2, 1):
        rows = [((i, j), p * q) for (i, p), (j, q) in itertools.product(law, law)]
    else:  # (1, 2): one l, two independent masks of that size
        rows = [((i, j), p * q * L) for (i, p), (j, q) in itertools.product(law, law) if size[i] == size[j]]
    if antithetic:
        outcomes = [(sum(float(vp[k] - vr[k]) for k in ks) / len(ks), p) for ks, p in rows]
    else:
        outcomes = [(sum(float(vp[k]) for k in a) / len(a) - sum(float(vr[k]) for k in b) / len(b), p * q)
                    for (a, p), (b, q) in itertools.product(rows, rows)]
    total = sum(p for _, p in outcomes)
    assert abs(total - 1) < 1e-9
    mean = sum(v * p for v, p in outcomes)
    return sum((v - mean) ** 2 * p for v, p in outcomes)


@pytest.mark.parametrize("n_t,n_yt,antithetic", [(1, 1, True), (2, 1, True), (1, 2, True), (2, 1, False), (1, 2, False)])
def test_exact_score_variance_equals_brute_force_enumeration(models, n_t, n_yt, antithetic):
    from alignment.variance import exact_pair_components, exact_score_variance
    from llada.likelihood import exact_mask_values

    policy, reference = models
    x, yw, yl = _short_pairs()[0]
    want = 0.0
    for y in (yw, yl):
        masks, fp = exact_mask_values(policy, x, y)
        _, fr = exact_mask_values(reference, x, y)
        want += _brute_force_var(fp, fr, masks, n_t, n_yt, antithetic)
    got = exact_score_variance(exact_pair_components(policy, reference, (x, yw, yl)), VarianceSetting(n_t, n_yt, antithetic),
                               beta=0.5)
    assert got == pytest.approx(0.25 * want, rel=1e-9)


def test_monte_carlo_variance_matches_exact(models):
    policy, reference = models
    settings = [VarianceSetting(1, 1), VarianceSetting(2, 1), VarianceSetting(1, 2), VarianceSetting(2, 1, False)]
    rows = measure_variance(policy, reference, _short_pairs(), settings, repeats=256, with_grad=False,
                            progress=False, exact=True)
    table = to_markdown(rows)
    assert "exact Var(score)" in table
    for r in rows:
        assert r.var_score_se > 0
        assert abs(r.var_score - r.exact_var_score) < 4 * r.var_score_se, table
    exact = {r.setting.label: r.exact_var_score for r in rows}
    # the theory's order on exact values: more timesteps beat more masks per timestep at the same budget
    assert exact["2x1"] < exact["1x2"] < exact["1x1"] < exact["2x1 (no antithetic)"], table


def test_bench_trajectory_script_on_a_run(tmp_path, models):
    """bench/vrpo_variance.py on a run folder: a checkpoint equal to the reference has zero antithetic variance
    in every setting; a moved policy orders 8x1 < 4x1 < 2x2 < 1x4 < 1x1, far below independent draws."""
    import json
    import subprocess

    from transformers import AutoTokenizer

    policy, reference = models
    ref_dir = tmp_path / "ref"
    reference.save_pretrained(ref_dir)
    src = Path(reference.name_or_path)
    tok = AutoTokenizer.from_pretrained(str(src))
    tok.save_pretrained(ref_dir)
    reference.save_pretrained(tmp_path / "run" / "checkpoint-0000001")
    policy.save_pretrained(tmp_path / "run" / "final")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Which is larger: 37 or 52", "chosen": "52", "rejected": "37"},
        {"prompt": "Say the larger number: 9 or 14", "chosen": "14", "rejected": "9 or"}]))
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "traj.md"
    subprocess.run([sys.executable, str(root / "bench" / "vrpo_variance.py"), "--run", str(tmp_path / "run"),
                    "--reference", str(ref_dir), "--pairs", str(pairs), "--out", str(out)], check=True, cwd=root,
                   capture_output=True, text=True)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.read_text().splitlines() if line.startswith("| step") or line.startswith("| final")}
    assert set(rows) == {"step 1", "final"}
    same, moved = rows["step 1"], [float(v) for v in rows["final"][:6]]
    assert all(float(v) == 0.0 for v in same[:5]) and float(same[5]) > 0 and same[6] == "inf"
    v8, v4, v22, v14, v11, off = moved
    assert v8 < v4 < v22 < v14 < v11 < off, rows["final"]
