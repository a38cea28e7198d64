"""VRPO: variance-reduced preference optimisation for masked diffusion models (LLaDA 1.5, Eq. 7-8).

DPO needs log-likelihoods; a masked diffusion model only has the ELBO, estimated by Monte Carlo. VRPO
replaces each log-likelihood by an ELBO estimate B and reduces the variance of the resulting score:

    s_theta(x, y_w, y_l) = beta * [ (B_theta(y_w|x) - B_ref(y_w|x)) - (B_theta(y_l|x) - B_ref(y_l|x)) ]   (Eq. 7)
    loss = -log sigmoid(s_theta)                                                                          (Eq. 8)

with three techniques, each a switch of `VRPOConfig`:

1. budget: each B uses n = n_t * n_yt samples (n_t masked-token counts l ~ U{1..L}, the l-form of the
   timestep, and n_yt masks per l);  Var[B] = V_t / n_t + V_yt / (n_t n_yt).
2. optimal allocation: for a fixed n the variance is smallest at n_t = n, n_yt = 1 (`allocate_budget`).
3. antithetic sampling: policy and reference see exactly the same (l, mask) draws for the same y, so their
   ELBO estimates are strongly correlated and the differences B_theta - B_ref have a small variance.

The ELBO itself is `llada.likelihood`'s estimator, called through its shared-randomness API
(`MaskDraws` + `score_draws_batch`); nothing here re-implements it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from llada.forward_process import forward_process
from llada.likelihood import MaskDraws, score_draws_batch


@dataclass
class VRPOConfig:
    """The estimator and loss settings of VRPO (defaults from the LLaDA 1.5 paper).

    beta: DPO temperature (0.2).
    budget: n, Monte Carlo samples per ELBO estimate (8).
    n_t / n_yt: explicit allocation of the budget (masked-token counts x masks per count); None = from
        `optimal_allocation` (n_t = n, n_yt = 1) or the worst one (n_t = 1, n_yt = n) when it is off.
    optimal_allocation: allocate the budget to distinct masked-token counts (True) or to masks of one count.
    antithetic: policy and reference share the (l, mask) draws of each response.
    sft_weight: weight of the SFT loss on the chosen response added to the VRPO loss (0.05).
    cfg_scale: classifier-free guidance inside the ELBO (0 = off, as in the paper).
    """

    beta: float = 0.2
    budget: int = 8
    n_t: Optional[int] = None
    n_yt: Optional[int] = None
    optimal_allocation: bool = True
    antithetic: bool = True
    sft_weight: float = 0.05
    cfg_scale: float = 0.0

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"VRPOConfig: beta must be > 0, got {self.beta}")
        if self.sft_weight < 0:
            raise ValueError(f"VRPOConfig: sft_weight must be >= 0, got {self.sft_weight}")
        self.n_t, self.n_yt = allocate_budget(self.budget, self.n_t, self.n_yt, optimal=self.optimal_allocation)
        self.budget = self.n_t * self.n_yt


def allocate_budget(budget: int, n_t: Optional[int] = None, n_yt: Optional[int] = None, *,
                    optimal: bool = True) -> tuple[int, int]:
    """Split a Monte Carlo budget n = n_t * n_yt (LLaDA 1.5, Thm. 2).

    Var[B_hat] = V_t / n_t + V_yt / (n_t n_yt) is minimised for fixed n by n_t = n, n_yt = 1 (optimal);
    with `optimal=False` the whole budget goes to masks of one count (n_t = 1, n_yt = n). Explicit n_t / n_yt
    override the rule and must multiply to the budget when both are given.
    """
    if budget < 1:
        raise ValueError(f"the Monte Carlo budget must be >= 1, got {budget}")
    if n_t is not None and n_yt is not None:
        if n_t < 1 or n_yt < 1:
            raise ValueError(f"n_t and n_yt must be >= 1, got n_t={n_t}, n_yt={n_yt}")
        return int(n_t), int(n_yt)
    if n_t is not None or n_yt is not None:
        given = n_t if n_t is not None else n_yt
        if given < 1 or budget % given:
            raise ValueError(f"budget {budget} is not divisible by {'n_t' if n_t is not None else 'n_yt'}={given}")
        other = budget // given
        return (int(given), other) if n_t is not None else (other, int(given))
    return (budget, 1) if optimal else (1, budget)


def draw_elbo_masks(answer_length: int, n_t: int, n_yt: int, *, num_estimates: int = 1,
                    generator: Optional[torch.Generator] = None) -> MaskDraws:
    """n_t masked-token counts l ~ U{1..L} (i.i.d.), each with n_yt uniform masks of that size.

    The masks come from the shared forward process (`forward_process(num_masked=l)`). Each of the
    `num_estimates` minibatches holds n_t * n_yt rows and is one independent estimate
        B_hat = 1/(n_t n_yt) sum_t sum_j (L / l_t) sum_{i in S_tj} log p_theta(y_i | x, y^{S_tj}),
    i.e. `score_draws(...)` returns `num_estimates` independent B_hat values (their mean for one estimate).
    """
    if answer_length < 1:
        raise ValueError(f"answer_length must be >= 1, got {answer_length}")
    if num_estimates < 1:
        raise ValueError(f"num_estimates must be >= 1, got {num_estimates}")
    rows = n_t * n_yt
    counts = torch.randint(1, answer_length + 1, (num_estimates, n_t), generator=generator).repeat_interleave(n_yt, dim=1)
    placeholder = torch.zeros(num_estimates * rows, answer_length, dtype=torch.long)
    _, is_masked = forward_process(placeholder, 1, num_masked=counts.reshape(-1), generator=generator)
    return MaskDraws(num_masked=counts, is_masked=is_masked.reshape(num_estimates, rows, answer_length))


def vrpo_score(policy_chosen: torch.Tensor, reference_chosen: torch.Tensor, policy_rejected: torch.Tensor,
               reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 7: s = beta * [(B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l))] (elementwise over pairs)."""
    return beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))


def vrpo_loss(score: torch.Tensor) -> torch.Tensor:
    """Eq. 8: -log sigmoid(s), computed stably as softplus(-s); averaged over the pairs."""
    return F.softplus(-score).mean()


@dataclass
class PreferenceELBOs:
    """ELBO estimates of a batch of pairs: policy ones carry gradients, reference ones do not."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor


def _check_pair(index: int, prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int]) -> None:
    if len(chosen) == 0 or len(rejected) == 0:
        raise ValueError(f"preference pair {index}: empty {'chosen' if len(chosen) == 0 else 'rejected'} response")
    if list(chosen) == list(rejected):
        raise ValueError(f"preference pair {index}: the chosen and rejected responses are identical")


def check_compatible(policy: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Refuse a reference model whose vocabulary or mask id differs from the policy's."""
    pc, rc = policy.config, reference.config
    pv, rv = getattr(pc, "padded_vocab_size", None), getattr(rc, "padded_vocab_size", None)
    if pv != rv:
        raise ValueError(f"the reference model's vocabulary ({rv}) differs from the policy's ({pv})")
    if pc.mask_token_id != rc.mask_token_id:
        raise ValueError(f"the reference model's mask id ({rc.mask_token_id}) differs from the policy's ({pc.mask_token_id})")


Pairs = Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]]
Generators = Union[None, torch.Generator, Sequence[Optional[torch.Generator]]]


def _per_pair(generators: Generators, n: int) -> list[Optional[torch.Generator]]:
    if generators is None or isinstance(generators, torch.Generator):
        return [generators] * n
    generators = list(generators)
    if len(generators) != n:
        raise ValueError(f"{len(generators)} generators for {n} pairs")
    return generators


def draw_pair_masks(pairs: Pairs, config: VRPOConfig, generators: Generators = None,
                    reference_generators: Generators = None) -> tuple[list[tuple[list[int], list[int]]], list[MaskDraws], list[MaskDraws]]:
    """The (x, y) requests of a batch of pairs (y_w then y_l per pair) and their policy / reference draws.

    Pair i draws from `generators[i]` (one generator per pair keeps the draws of a pair independent of how
    the batch is split over processes). With `config.antithetic` the reference draws ARE the policy draws;
    otherwise they are independent (from `reference_generators`, default: continuing the policy's).
    """
    for i, (x, yw, yl) in enumerate(pairs):
        _check_pair(i, x, yw, yl)
    gens = _per_pair(generators, len(pairs))
    ref_gens = _per_pair(reference_generators, len(pairs)) if reference_generators is not None else gens
    requests, draws, ref_draws = [], [], []
    for (x, yw, yl), g, rg in zip(pairs, gens, ref_gens):
        for y in (yw, yl):
            d = draw_elbo_masks(len(y), config.n_t, config.n_yt, generator=g)
            requests.append((list(x), list(y)))
            draws.append(d)
            ref_draws.append(d if config.antithetic else draw_elbo_masks(len(y), config.n_t, config.n_yt, generator=rg))
    return requests, draws, ref_draws


def score_requests(model: torch.nn.Module, requests, draws: Sequence[MaskDraws], config: VRPOConfig,
                   rows_per_forward: Optional[int] = None) -> torch.Tensor:
    """ELBO estimates B_hat (one per request) under the caller's grad mode, via llada.likelihood."""
    values = score_draws_batch(model, requests, draws, cfg_scale=config.cfg_scale, rows_per_forward=rows_per_forward)
    return torch.stack([v.mean() for v in values])


def preference_elbos(
    policy: torch.nn.Module,
    reference: Optional[torch.nn.Module],
    pairs: Pairs,
    config: VRPOConfig,
    *,
    generator: Generators = None,
    reference_generator: Generators = None,
    reference_values: Optional[torch.Tensor] = None,
    rows_per_forward: Optional[int] = None,
) -> PreferenceELBOs:
    """B_theta and B_ref of y_w and y_l for each (x, y_w, y_l) in `pairs` (token id lists).

    With `config.antithetic` the reference scores the very draws of the policy; otherwise it gets its own
    draws. The reference runs under no_grad; `reference_values` (2 per pair: y_w, y_l, computed earlier
    with the same draws by `score_requests`) replace the reference model when memory is short.
    """
    requests, draws, ref_draws = draw_pair_masks(pairs, config, generator, reference_generator)
    pol_b = score_requests(policy, requests, draws, config, rows_per_forward)
    if reference_values is None:
        if reference is None:
            raise ValueError("preference_elbos: give a reference model or precomputed reference_values")
        with torch.no_grad():
            ref_b = score_requests(reference, requests, ref_draws, config, rows_per_forward)
    else:
        ref_b = torch.as_tensor(reference_values, dtype=pol_b.dtype)
        if ref_b.numel() != pol_b.numel():
            raise ValueError(f"reference_values has {ref_b.numel()} entries, expected {pol_b.numel()} (2 per pair)")
    ref_b = ref_b.to(pol_b.device)
    return PreferenceELBOs(pol_b[0::2], pol_b[1::2], ref_b[0::2], ref_b[1::2])


@dataclass
class VRPOOutput:
    loss: torch.Tensor  # VRPO loss + sft_weight * SFT loss (what is back-propagated)
    vrpo_loss: torch.Tensor
    sft_loss: Optional[torch.Tensor]
    score: torch.Tensor  # (pairs,) detached
    chosen_reward: torch.Tensor  # beta (B_theta(y_w) - B_ref(y_w)), detached
    rejected_reward: torch.Tensor

    @property
    def reward_margin(self) -> torch.Tensor:
        return self.chosen_reward - self.rejected_reward

    @property
    def reward_accuracy(self) -> torch.Tensor:
        return (self.score > 0).float().mean()


def vrpo_objective(
    policy: torch.nn.Module,
    reference: Optional[torch.nn.Module],
    pairs: Pairs,
    config: VRPOConfig,
    *,
    generator: Generators = None,
    sft_generators=None,
    reference_values: Optional[torch.Tensor] = None,
    pad_id: Optional[int] = None,
    rows_per_forward: Optional[int] = None,
) -> VRPOOutput:
    """The VRPO training objective of a batch of pairs: Eq. 8 on Eq. 7 plus `sft_weight` x SFT loss on y_w."""
    elbos = preference_elbos(policy, reference, pairs, config, generator=generator, reference_values=reference_values,
                             rows_per_forward=rows_per_forward)
    score = vrpo_score(elbos.policy_chosen, elbos.reference_chosen, elbos.policy_rejected, elbos.reference_rejected,
                       config.beta)
    main = vrpo_loss(score).float()
    sft = None
    total = main
    if config.sft_weight > 0:
        from llada.losses import sft_objective

        device = next(policy.parameters()).device
        pad = pad_id if pad_id is not None else policy.config.eos_token_id
        width = max(len(x) + len(yw) for x, yw, _ in pairs)
        ids = torch.full((len(pairs), width), pad, dtype=torch.long)
        prompt_lengths = torch.zeros(len(pairs), dtype=torch.long)
        for i, (x, yw, _) in enumerate(pairs):
            seq = list(x) + list(yw)
            ids[i, :len(seq)] = torch.tensor(seq)  # right-padded with EOS: the padding is response (SFT rule)
            prompt_lengths[i] = len(x)
        sft = sft_objective(policy, ids.to(device), prompt_lengths.to(device), mask_token_id=policy.config.mask_token_id,
                            generator=sft_generators).loss
        total = main + config.sft_weight * sft
    beta = config.beta
    return VRPOOutput(
        loss=total,
        vrpo_loss=main.detach(),
        sft_loss=None if sft is None else sft.detach(),
        score=score.detach(),
        chosen_reward=(beta * (elbos.policy_chosen - elbos.reference_chosen)).detach(),
        rejected_reward=(beta * (elbos.policy_rejected - elbos.reference_rejected)).detach(),
    )
