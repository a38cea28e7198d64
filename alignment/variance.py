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


def _slice(d: MaskDraws, r: int) -> MaskDraws:
    return MaskDraws(num_masked=d.num_masked[r:r + 1], is_masked=d.is_masked[r:r + 1])


def _param(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    params = dict(model.named_parameters())
    if name not in params:
        raise ValueError(f"gradient proxy parameter {name!r} not found in the policy")
    return params[name]


def measure_pair(policy, reference, pair, setting: VarianceSetting, repeats: int, *, beta: float,
                 generator: torch.Generator, with_grad: bool = True, grad_param: str = GRAD_PROXY):
    """(Var(score), Var(loss), Var(grad) or None, mean score) of one pair over `repeats` re-draws."""
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
        ref = score_draws_batch(reference, requests, ref_draws)  # (repeats,) estimates per response
        pol = score_draws_batch(policy, requests, draws)
    scores = vrpo_score(pol[0], ref[0].to(pol[0].device), pol[1], ref[1].to(pol[1].device), beta)
    losses = F.softplus(-scores)
    var_grad = None
    if with_grad:
        param = _param(policy, grad_param)
        grads = []
        for r in range(repeats):
            b = score_requests(policy, requests, [_slice(draws[0], r), _slice(draws[1], r)], cfg)
            s = vrpo_score(b[0], ref[0][r].to(b.device), b[1], ref[1][r].to(b.device), beta)
            (g,) = torch.autograd.grad(F.softplus(-s), param)
            grads.append(g.detach().flatten().to(torch.float64))
        var_grad = float(torch.stack(grads).var(dim=0).sum())
    return float(scores.var()), float(losses.var()), var_grad, float(scores.mean())


def measure_variance(policy, reference, pairs: Sequence, settings: Sequence[VarianceSetting], *, repeats: int = 8,
                     beta: float = 0.2, seed: int = 0, with_grad: bool = True, grad_param: str = GRAD_PROXY,
                     progress: bool = True) -> list[VarianceRow]:
    """The variance table: one row per setting, each averaged over `pairs`."""
    from tqdm.auto import tqdm

    policy.eval()
    rows = []
    for setting in settings:
        t0 = time.time()
        g = torch.Generator().manual_seed(seed)
        acc = []
        for pair in tqdm(pairs, desc=setting.label, disable=not progress):
            acc.append(measure_pair(policy, reference, pair, setting, repeats, beta=beta, generator=g,
                                    with_grad=with_grad, grad_param=grad_param))
        cols = list(zip(*acc))
        rows.append(VarianceRow(
            setting=setting, var_score=sum(cols[0]) / len(acc), var_loss=sum(cols[1]) / len(acc),
            var_grad=(sum(cols[2]) / len(acc)) if with_grad else None, mean_score=sum(cols[3]) / len(acc),
            pairs=len(acc), repeats=repeats, seconds=time.time() - t0))
    return rows


def to_markdown(rows: Sequence[VarianceRow]) -> str:
    lines = ["| n_t x n_yt | Var(score) | Var(loss) | Var(grad) | mean score | pairs x repeats | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        vg = "-" if r.var_grad is None else f"{r.var_grad:.4g}"
        lines.append(f"| {r.setting.label} | {r.var_score:.4g} | {r.var_loss:.4g} | {vg} | {r.mean_score:.4g} | "
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
    rows = measure_variance(policy, reference, [p.as_tuple() for p in pairs], settings, repeats=args.repeats,
                            beta=args.beta, seed=args.seed, with_grad=not args.no_grad)
    table = to_markdown(rows)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(f"policy {args.policy}, reference {args.reference or args.policy}, beta {args.beta}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
