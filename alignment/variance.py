"""Variance diagnostics of the VRPO score (LLaDA 1.5, Table 2) on your own models.

    python -m alignment.variance --policy RUN/final --reference SFT_MODEL --pairs prefs.jsonl \\
        --repeats 8 --settings 1x1,4x1,8x1,1x4,2x2,4x1:noanti

For every setting (n_t x n_yt, antithetic or not) and every preference pair, the VRPO score is estimated
`repeats` times with fresh (l, mask) draws; the table reports, averaged over the pairs,

    Var(score)  the sample variance of s_theta (Eq. 7) over the repeats,
    Var(loss)   the sample variance of -log sigmoid(s_theta),
    Var(grad)   the total variance (trace of the covariance) over the repeats of the gradient of the loss with
                respect to the paper's proxy parameter, the first block's FFN up-projection,

which the paper's theory orders as 8x1 < 4x1 < 2x2 < 1x4 < 1x1 for Var(score), with antithetic sampling far
below independent draws. The ELBOs come from `llada.likelihood` through `alignment.vrpo`.

Each Var(score) carries a bootstrap standard error over the repeats (pairs held fixed). With --exact (answers up to
16 tokens) the table adds the exact Var(score) of the same pairs: every mask of each answer is scored once and the
variance follows from the law of total variance, Var = Var_l(E[v|l]) / n_t + E_l[Var(v|l)] / (n_t n_yt) per ELBO
term, so the theory's ordering can be checked without Monte Carlo noise and the measured values against it.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from llada.likelihood import MaskDraws

from .vrpo import VRPOConfig, draw_elbo_masks, score_requests, vrpo_score

GRAD_PROXY = "model.transformer.blocks.0.up_proj.weight"
DEFAULT_SETTINGS = "1x1,4x1,8x1,1x4,2x2,4x1:noanti"
ROWS_PER_FORWARD = 256  # rows of all repeats packed into shared forwards (no-grad scoring)


@dataclass(frozen=True)
class VarianceSetting:
    n_t: int
    n_yt: int
    antithetic: bool = True

    @property
    def label(self) -> str:
        return f"{self.n_t}x{self.n_yt}" + ("" if self.antithetic else " (no antithetic)")

    @classmethod
    def parse(cls, text: str) -> "VarianceSetting":
        """'4x1' (antithetic) or '4x1:noanti'."""
        body, _, flag = text.strip().partition(":")
        try:
            n_t, n_yt = (int(v) for v in body.lower().split("x"))
        except ValueError as err:
            raise ValueError(f"variance setting {text!r}: expected N_TxN_YT, e.g. 4x1 or 4x1:noanti") from err
        if flag not in ("", "noanti", "anti"):
            raise ValueError(f"variance setting {text!r}: unknown flag {flag!r} (use :noanti)")
        if n_t < 1 or n_yt < 1:
            raise ValueError(f"variance setting {text!r}: n_t and n_yt must be >= 1")
        return cls(n_t, n_yt, flag != "noanti")


@dataclass
class VarianceRow:
    setting: VarianceSetting
    var_score: float
    var_loss: float
    var_grad: Optional[float]
    mean_score: float
    pairs: int
    repeats: int
    seconds: float
    var_score_se: Optional[float] = None
    exact_var_score: Optional[float] = None
    grad_repeats: Optional[int] = None  # repeats behind Var(grad) when fewer than `repeats`


def _slice(d: MaskDraws, r: int) -> MaskDraws:
    return MaskDraws(num_masked=d.num_masked[r:r + 1], is_masked=d.is_masked[r:r + 1])


def _param(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    params = dict(model.named_parameters())
    if name not in params:
        raise ValueError(f"gradient proxy parameter {name!r} not found in the policy")
    return params[name]


def measure_pair(policy, reference, pair, setting: VarianceSetting, repeats: int, *, beta: float,
                 generator: torch.Generator, with_grad: bool = True, grad_param: str = GRAD_PROXY,
                 grad_repeats: Optional[int] = None):
    """(Var(score), Var(loss), Var(grad) or None, mean score, the `repeats` scores) of one pair over `repeats`
    re-draws. Var(grad) uses the first `grad_repeats`
    repeats (default all): one backward pass each, the slow part of the table."""
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 to estimate a variance, got {repeats}")
    x, yw, yl = (list(v) for v in pair)
    cfg = VRPOConfig(beta=beta, budget=setting.n_t * setting.n_yt, n_t=setting.n_t, n_yt=setting.n_yt,
                     antithetic=setting.antithetic, sft_weight=0.0)
    requests = [(x, yw), (x, yl)]
    draws = [draw_elbo_masks(len(y), setting.n_t, setting.n_yt, num_estimates=repeats, generator=generator) for y in (yw, yl)]
    ref_draws = draws if setting.antithetic else [
        draw_elbo_masks(len(y), setting.n_t, setting.n_yt, num_estimates=repeats, generator=generator) for y in (yw, yl)]
    from llada.likelihood import score_draws_batch

    with torch.no_grad():
        ref = score_draws_batch(reference, requests, ref_draws, rows_per_forward=ROWS_PER_FORWARD)  # (repeats,) per response
        pol = score_draws_batch(policy, requests, draws, rows_per_forward=ROWS_PER_FORWARD)
    scores = vrpo_score(pol[0], ref[0].to(pol[0].device), pol[1], ref[1].to(pol[1].device), beta)
    losses = F.softplus(-scores)
    var_grad = None
    if with_grad:
        param = _param(policy, grad_param)
        grads = []
        k = repeats if grad_repeats is None else max(2, min(repeats, grad_repeats))
        for r in range(k):
            b = score_requests(policy, requests, [_slice(draws[0], r), _slice(draws[1], r)], cfg)
            s = vrpo_score(b[0], ref[0][r].to(b.device), b[1], ref[1][r].to(b.device), beta)
            (g,) = torch.autograd.grad(F.softplus(-s), param)
            grads.append(g.detach().flatten().to(torch.float64))
        var_grad = float(torch.stack(grads).var(dim=0).sum())
    return float(scores.var()), float(losses.var()), var_grad, float(scores.mean()), scores.detach().cpu()


def bootstrap_se(scores: Sequence[torch.Tensor], *, resamples: int = 1000, seed: int = 0) -> float:
    """Standard error of mean-over-pairs(sample variance over repeats) from the Monte Carlo repeats alone:
    resample each pair's repeats with replacement, the pairs held fixed (the settings of one table share them)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.stack([t.to(torch.float64) for t in scores])  # (pairs, repeats)
    P, R = s.shape
    boot = []
    for start in range(0, resamples, 50):  # chunks keep memory at 50 x pairs x repeats
        n = min(50, resamples - start)
        idx = torch.randint(0, R, (n, P, R), generator=g)
        boot.append(torch.gather(s.unsqueeze(0).expand(n, P, R), 2, idx).var(dim=2).mean(dim=1))
    return float(torch.cat(boot).std())


@dataclass(frozen=True)
class ElboComponents:
    """The single-draw ELBO term v = (L / l) f(S) of one answer under one model (or a difference of two models
    under shared draws), split by the law of total variance over l ~ U{1..L} and S | l uniform of size l:

        mean = E[v],   between = Var_l(E[v | l]),   within = E_l[Var(v | l)],

    so an estimate from n_t timesteps with n_yt masks each has variance between / n_t + within / (n_t n_yt).
    """

    mean: float
    between: float
    within: float

    def variance(self, n_t: int, n_yt: int) -> float:
        return self.between / n_t + self.within / (n_t * n_yt)


def elbo_components(masks: torch.Tensor, values: torch.Tensor) -> ElboComponents:
    """`ElboComponents` of per-mask values f(S) (e.g. from `llada.likelihood.exact_mask_values`)."""
    from llada.likelihood import mask_size_moments

    L = masks.shape[1]
    mu, s2 = mask_size_moments(masks, values)
    w = L / torch.arange(1, L + 1, dtype=torch.float64)  # the ELBO weight L / l of a size-l mask
    cond_mean, cond_var = w * mu[1:], w ** 2 * s2[1:]
    return ElboComponents(float(cond_mean.mean()), float(cond_mean.var(unbiased=False)), float(cond_var.mean()))


def exact_pair_components(policy, reference, pair) -> dict[str, tuple[ElboComponents, ...]]:
    """Exact variance components of the VRPO score's ELBO terms for one (prompt, chosen, rejected) pair.

    Returns {"antithetic": (D_w, D_l), "independent": (P_w, R_w, P_l, R_l)}: D the components of the shared-draw
    difference v_theta - v_ref (antithetic sampling), P and R those of each model alone (independent draws).
    Enumerates all 2^L - 1 masks of each answer, so only for answers up to `EXACT_MAX_ANSWER_LENGTH` tokens.
    """
    from llada.likelihood import exact_mask_values

    x, yw, yl = (list(v) for v in pair)
    anti, indep = [], []
    for y in (yw, yl):
        masks, f_pol = exact_mask_values(policy, x, y)
        _, f_ref = exact_mask_values(reference, x, y)
        f_ref = f_ref.to(f_pol.device)
        anti.append(elbo_components(masks, f_pol - f_ref))
        indep += [elbo_components(masks, f_pol), elbo_components(masks, f_ref)]
    return {"antithetic": tuple(anti), "independent": tuple(indep)}


def exact_score_variance(components: dict[str, tuple[ElboComponents, ...]], setting: VarianceSetting,
                         beta: float) -> float:
    """Exact Var(score) of Eq. 7 for one pair under `setting`: the chosen and rejected ELBOs are drawn
    independently, so their variances add; with antithetic sampling each is the variance of the shared-draw
    difference, without it the policy's and the reference's variances add."""
    parts = components["antithetic" if setting.antithetic else "independent"]
    return beta ** 2 * sum(c.variance(setting.n_t, setting.n_yt) for c in parts)


def measure_variance(policy, reference, pairs: Sequence, settings: Sequence[VarianceSetting], *, repeats: int = 8,
                     beta: float = 0.2, seed: int = 0, with_grad: bool = True, grad_param: str = GRAD_PROXY,
                     progress: bool = True, exact: bool = False, grad_repeats: Optional[int] = None
                     ) -> list[VarianceRow]:
    """The variance table: one row per setting, each averaged over `pairs`.

    Every row also carries the bootstrap standard error of its Var(score) over the repeats; with exact=True (answers
    up to `EXACT_MAX_ANSWER_LENGTH` tokens) the exact Var(score) of the same pairs by enumerating every mask, which
    the Monte Carlo value estimates.
    """
    from tqdm.auto import tqdm

    policy.eval()
    components = None
    if exact:
        with torch.no_grad():
            components = [exact_pair_components(policy, reference, p)
                          for p in tqdm(pairs, desc="exact", disable=not progress)]
    rows = []
    for setting in settings:
        t0 = time.time()
        g = torch.Generator().manual_seed(seed)
        acc = []
        for pair in tqdm(pairs, desc=setting.label, disable=not progress):
            acc.append(measure_pair(policy, reference, pair, setting, repeats, beta=beta, generator=g,
                                    with_grad=with_grad, grad_param=grad_param, grad_repeats=grad_repeats))
        cols = list(zip(*acc))
        rows.append(VarianceRow(
            setting=setting, var_score=sum(cols[0]) / len(acc), var_loss=sum(cols[1]) / len(acc),
            var_grad=(sum(cols[2]) / len(acc)) if with_grad else None, mean_score=sum(cols[3]) / len(acc),
            pairs=len(acc), repeats=repeats, seconds=time.time() - t0, var_score_se=bootstrap_se(cols[4], seed=seed),
            exact_var_score=(sum(exact_score_variance(c, setting, beta) for c in components) / len(components)
                             if components is not None else None),
            grad_repeats=(max(2, grad_repeats) if with_grad and grad_repeats is not None and grad_repeats < repeats
                          else None)))
    return rows


def to_markdown(rows: Sequence[VarianceRow]) -> str:
    with_exact = any(r.exact_var_score is not None for r in rows)
    head = "| n_t x n_yt | Var(score) | " + ("exact Var(score) | " if with_exact else "")
    lines = [head + "Var(loss) | Var(grad) | mean score | pairs x repeats | seconds |",
             "|---" * (7 + with_exact) + "|"]
    for r in rows:
        vg = "-" if r.var_grad is None else f"{r.var_grad:.4g}" + (f" (R {r.grad_repeats})" if r.grad_repeats else "")
        vs = f"{r.var_score:.4g}" + ("" if r.var_score_se is None else f" ± {r.var_score_se:.2g}")
        ex = (f"{r.exact_var_score:.4g} | " if r.exact_var_score is not None else "- | ") if with_exact else ""
        lines.append(f"| {r.setting.label} | {vs} | {ex}{r.var_loss:.4g} | {vg} | {r.mean_score:.4g} | "
                     f"{r.pairs} x {r.repeats} | {r.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import llada
    from transformers import AutoTokenizer

    from llada.data import read_rows

    from .data import tokenize_preferences

    ap = argparse.ArgumentParser(prog="python -m alignment.variance", description=__doc__.strip().splitlines()[0])
    ap.add_argument("--policy", required=True, help="policy model (Hub id or folder)")
    ap.add_argument("--reference", default=None, help="reference model (default: the policy itself)")
    ap.add_argument("--pairs", required=True, nargs="+", help="preference data (jsonl / json / parquet / Hub id)")
    ap.add_argument("--max-pairs", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated N_TxN_YT[:noanti]")
    ap.add_argument("--beta", type=float, default=0.2)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--no-grad", action="store_true", help="skip Var(grad) (faster)")
    ap.add_argument("--grad-repeats", type=int, default=None,
                    help="estimate Var(grad) from the first K repeats only (one backward pass each; default: all)")
    ap.add_argument("--exact", action="store_true",
                    help="also compute the exact Var(score) by enumerating every mask (answers up to 16 tokens)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", default=None, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [VarianceSetting.parse(s) for s in args.settings.split(",") if s.strip()]
    policy = llada.LLaDAModelLM.from_pretrained(args.policy, dtype=torch.float32)
    reference = llada.LLaDAModelLM.from_pretrained(args.reference or args.policy, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.policy)
    pairs = tokenize_preferences(read_rows(args.pairs), tok, max_length=args.max_length)[: args.max_pairs]
    if args.exact:
        from llada.likelihood import EXACT_MAX_ANSWER_LENGTH

        longest = max((max(len(p.as_tuple()[1]), len(p.as_tuple()[2])) for p in pairs), default=0)
        if longest > EXACT_MAX_ANSWER_LENGTH:
            raise SystemExit(f"--exact enumerates every mask of each answer: the longest answer in --pairs has "
                             f"{longest} tokens, more than {EXACT_MAX_ANSWER_LENGTH}; drop --exact or use shorter pairs")
    rows = measure_variance(policy, reference, [p.as_tuple() for p in pairs], settings, repeats=args.repeats,
                            beta=args.beta, seed=args.seed, with_grad=not args.no_grad, exact=args.exact,
                            grad_repeats=args.grad_repeats)
    table = to_markdown(rows)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(f"policy {args.policy}, reference {args.reference or args.policy}, beta {args.beta}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
