"""The conditional ELBO of LLaDA (Eq. 6) as a log-likelihood estimator, with its standard error.

LLaDA bounds the log-likelihood of an answer a = (a_1..a_L) given a prompt p by (LLaDA paper, Eq. 6)

    log p(a | p)  >=  E_{l ~ U{1..L}} E_{S ~ U(subsets of size l)} [ (L / l) * sum_{i in S} log p_theta(a_i | p, a^S) ]

where a^S is the answer with the positions in S replaced by `<|mdm_mask|>`; the prompt is never masked.
This module estimates the right-hand side:

- Monte Carlo (`log_likelihood`, `log_likelihood_batch`): `mc_num` draws of (l, S), `batch_size` per
  minibatch, with l stratified across the minibatch as the reference `get_log_likelihood` does
  (`stratified_num_masked`). The masks come from the shared forward process
  (`llada.forward_process.forward_process(num_masked=l)`), the same function the training losses use.
- Exact (`exact=True`): the expectation above computed by enumerating all 2^L - 1 non-empty subsets S
  (short answers only), i.e. the exact expectation of the Monte Carlo estimator.
- Adaptive (`tolerance=`): minibatches are drawn until the standard error falls below the tolerance (judged
  by a 90% upper confidence bound of the standard error, `standard_error_upper_bound`, so that a few
  agreeing draws of a heavy-tailed estimate do not stop it early).
- Shared randomness (`draw_masks` + `score_draws`): the same (l, S) draws scored by two models; this is the
  API VRPO (LLaDA 1.5) uses for its antithetic ELBO difference.

Standard error. The l of the rows within a minibatch are stratified (dependent), so rows are not i.i.d.;
minibatches are (each has its own uniform offset k and its own permutations). Each minibatch mean is
therefore treated as one i.i.d. sample m_1..m_n of the estimator with n = mc_num / batch_size, and

    estimate = mean(m),   standard error = std(m, ddof=1) / sqrt(n).

With a single minibatch (n = 1) the standard error cannot be estimated and is NaN; an exact result (and a
one-token answer, whose estimator is deterministic) has standard error 0.

Classifier-free guidance (as in sampling): an unconditional copy of every row with the prompt masked;
logits = u + (w + 1)(c - u).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .forward_process import forward_process

#: `exact=True` enumerates 2^L - 1 masks; longer answers are refused.
EXACT_MAX_ANSWER_LENGTH = 16
#: adaptive mode never stops on fewer than this many minibatches unless `min_mc_num` says otherwise.
ADAPTIVE_MIN_BATCHES = 4
#: adaptive mode stops when this upper confidence bound of the standard error is below the tolerance.
ADAPTIVE_CONFIDENCE = 0.9

IdsLike = Union[torch.Tensor, Sequence[int]]


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LikelihoodEstimate:
    """One log-likelihood estimate. Unpacks as `(estimate, std_error)`; `float(result)` is the estimate.

    estimate:    the ELBO estimate of log p(answer | prompt) (nats).
    std_error:   its standard error (minibatch means as i.i.d. samples; 0 for exact results, NaN with a
                 single minibatch).
    num_samples: number of (l, S) mask draws scored (rows; CFG rows not double counted).
    exact:       True when computed by enumerating every mask.
    """

    estimate: float
    std_error: float
    num_samples: int
    exact: bool = False

    def __iter__(self) -> Iterator[float]:
        return iter((self.estimate, self.std_error))

    def __float__(self) -> float:
        return float(self.estimate)


@dataclass(frozen=True)
class LikelihoodConfig:
    """Settings of the ELBO estimator (the lm-eval adapter and the CLI fill this).

    mc_num:      Monte Carlo samples (mask draws); with `tolerance` the maximum number of samples.
    batch_size:  draws per minibatch; l is stratified within a minibatch. `mc_num` must be a multiple.
    cfg_scale:   classifier-free guidance scale w (0 = off).
    exact:       True: enumerate every mask; "auto": enumerate when 2^L - 1 <= mc_num (cheaper and exact);
                 False: Monte Carlo.
    tolerance:   adaptive mode: stop once the standard error is below this, with 90% confidence (None = fixed mc_num).
    min_mc_num:  adaptive mode: never stop before this many samples (default 4 minibatches).
    rows_per_forward: rows per model forward when packing requests (default `batch_size`).
    """

    mc_num: int = 128
    batch_size: int = 16
    cfg_scale: float = 0.0
    exact: Union[bool, str] = False
    tolerance: Optional[float] = None
    min_mc_num: Optional[int] = None
    rows_per_forward: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.mc_num, int) or self.mc_num < 1:
            raise ValueError(f"mc_num must be a positive integer, got {self.mc_num!r}")
        if self.mc_num % self.batch_size:
            raise ValueError(
                f"mc_num={self.mc_num} is not a multiple of batch_size={self.batch_size}: the estimator averages "
                f"whole minibatches of stratified draws (choose e.g. mc_num={self.batch_size * max(1, round(self.mc_num / self.batch_size))})"
            )
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.exact not in (True, False, "auto"):
            raise ValueError(f"exact must be True, False or 'auto', got {self.exact!r}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ValueError(f"tolerance must be > 0 (or None for a fixed mc_num), got {self.tolerance}")
        if self.min_mc_num is not None:
            if self.min_mc_num < 2 * self.batch_size or self.min_mc_num % self.batch_size:
                raise ValueError(
                    f"min_mc_num={self.min_mc_num} must be a multiple of batch_size={self.batch_size} and cover at "
                    f"least 2 minibatches (a standard error needs two)"
                )
            if self.min_mc_num > self.mc_num:
                raise ValueError(f"min_mc_num={self.min_mc_num} exceeds mc_num={self.mc_num} (the maximum in adaptive mode)")
        if self.tolerance is not None and self.mc_num < 2 * self.batch_size:
            raise ValueError(
                f"adaptive mode (tolerance) needs mc_num >= 2 * batch_size to estimate a standard error; "
                f"got mc_num={self.mc_num}, batch_size={self.batch_size}"
            )
        if self.rows_per_forward is not None and self.rows_per_forward < 1:
            raise ValueError(f"rows_per_forward must be >= 1, got {self.rows_per_forward}")

    @property
    def num_batches(self) -> int:
        return self.mc_num // self.batch_size

    @property
    def adaptive_min_batches(self) -> int:
        if self.min_mc_num is not None:
            return self.min_mc_num // self.batch_size
        return min(ADAPTIVE_MIN_BATCHES, self.num_batches)


# --------------------------------------------------------------------------------------------- the draws


def stratified_num_masked(
    answer_length: int,
    batch_size: int,
    *,
    generator: Optional[torch.Generator] = None,
    offset: Optional[int] = None,
) -> torch.Tensor:
    """Numbers of masked answer tokens for one minibatch, stratified as in the reference estimator.

        k ~ U{1..L},   l_j = ((k - 1 + floor(j * L / b + 1/2)) mod L) + 1,   j = 0..b-1

    (L = answer length, b = batch size). Each l_j is marginally uniform on 1..L, so each row is an unbiased
    draw of Eq. 6, while the minibatch covers 1..L evenly. The reference computes round(k + j*L/b) with
    round-half-to-even, which makes l_j depend on the parity of k whenever j*L/b ends in .5 and leaves
    l_j slightly non-uniform (a small bias); here ties are broken upward in exact integer arithmetic.
    `offset` fixes k (1..L) instead of drawing it. Returns a LongTensor (b,).
    """
    if answer_length < 1:
        raise ValueError(f"answer_length must be >= 1, got {answer_length}")
    L, b = int(answer_length), int(batch_size)
    if offset is None:
        k = int(torch.randint(1, L + 1, (), generator=generator))
    elif 1 <= int(offset) <= L:
        k = int(offset)
    else:
        raise ValueError(f"offset must lie in 1..{L}, got {offset}")
    j = torch.arange(b, dtype=torch.long)
    shift = (2 * j * L + b) // (2 * b)  # floor(j L / b + 1/2), exact
    return (k - 1 + shift) % L + 1


@dataclass(frozen=True)
class MaskDraws:
    """Mask draws for the ELBO of one answer length, reusable across models (shared randomness).

    num_masked: LongTensor (num_batches, batch_size): l of every row.
    is_masked:  BoolTensor (num_batches, batch_size, answer_length): the masked answer positions S.
    """

    num_masked: torch.Tensor
    is_masked: torch.Tensor

    @property
    def num_batches(self) -> int:
        return int(self.is_masked.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.is_masked.shape[1])

    @property
    def answer_length(self) -> int:
        return int(self.is_masked.shape[2])

    @property
    def mc_num(self) -> int:
        return self.num_batches * self.batch_size

    def weights(self) -> torch.Tensor:
        """Row weights (num_batches, batch_size): (L / l) / b, so a minibatch value is sum(weight * row log-prob)."""
        return elbo_weight(self.num_masked, self.answer_length) / self.batch_size


def elbo_weight(num_masked: torch.Tensor, answer_length: int) -> torch.Tensor:
    """The weight L / l of a row with l masked answer tokens in Eq. 6 (float64)."""
    return float(answer_length) / num_masked.to(torch.float64)


def draw_masks(
    answer_length: int,
    *,
    mc_num: int = 128,
    batch_size: int = 16,
    generator: Optional[torch.Generator] = None,
) -> MaskDraws:
    """Draw `mc_num` (l, S) pairs for an answer of `answer_length` tokens, `batch_size` per minibatch.

    Per minibatch: l stratified by `stratified_num_masked`, then for each row a uniform subset S of size l
    from the shared forward process `forward_process(num_masked=l)`. Draws are made on the CPU (from
    `generator` if given), so they are identical whatever device the models live on.

    Shared randomness (the API VRPO uses): score the same draws with several models,

        draws = draw_masks(len(y), mc_num=8, batch_size=8, generator=g)
        b_policy = score_draws(policy, x, y, draws).mean()           # differentiable
        with torch.no_grad():
            b_ref = score_draws(reference, x, y, draws).mean()
    """
    LikelihoodConfig(mc_num=mc_num, batch_size=batch_size)  # validates
    if answer_length < 1:
        raise ValueError(f"answer_length must be >= 1, got {answer_length}")
    n = mc_num // batch_size
    num_masked = torch.stack([stratified_num_masked(answer_length, batch_size, generator=generator) for _ in range(n)])
    # Only the mask pattern of the forward process is used here; the ids are placeholders.
    placeholder = torch.zeros(n * batch_size, answer_length, dtype=torch.long)
    _, is_masked = forward_process(placeholder, 1, num_masked=num_masked.reshape(-1), generator=generator)
    return MaskDraws(num_masked=num_masked, is_masked=is_masked.reshape(n, batch_size, answer_length))


def exact_masks(answer_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-empty mask S of an answer of length L with its weight in the exact expectation of Eq. 6.

    E_l E_S[(L/l) sum_{i in S} log p] = sum_S w_S sum_{i in S} log p,   w_S = (1/L)(L/l)/C(L, l) = 1 / (l C(L, l)),
    l = |S|. Returns (is_masked BoolTensor (2^L - 1, L), weights float64 (2^L - 1,)).
    """
    L = int(answer_length)
    if L < 1:
        raise ValueError(f"answer_length must be >= 1, got {L}")
    if L > EXACT_MAX_ANSWER_LENGTH:
        raise ValueError(
            f"exact=True enumerates 2^L - 1 masks; the answer has L={L} tokens, more than the limit "
            f"{EXACT_MAX_ANSWER_LENGTH} (use the Monte Carlo estimator)"
        )
    codes = torch.arange(1, 2**L, dtype=torch.long)
    is_masked = (codes[:, None] >> torch.arange(L, dtype=torch.long)) & 1 == 1
    l = is_masked.sum(dim=1)
    binom = torch.tensor([math.comb(L, int(i)) for i in range(L + 1)], dtype=torch.float64)
    return is_masked, 1.0 / (l.to(torch.float64) * binom[l])


# --------------------------------------------------------------------------------------------- scoring


def _as_ids(ids: IdsLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(ids if isinstance(ids, torch.Tensor) else list(ids), dtype=torch.long).cpu()
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {tuple(t.shape)}")
    return t


def _model_device(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _special_ids(model: torch.nn.Module, mask_token_id: Optional[int]) -> tuple[int, int]:
    config = getattr(model, "config", None)
    mask = mask_token_id if mask_token_id is not None else getattr(config, "mask_token_id", None)
    if mask is None:
        raise ValueError("the model config has no mask_token_id; pass mask_token_id=")
    pad = getattr(config, "pad_token_id", None)
    if pad is None or pad == mask:
        pad = getattr(config, "eos_token_id", None)
    if isinstance(pad, (list, tuple)):
        pad = pad[0]
    if pad is None or pad == mask:
        pad = 0 if mask != 0 else 1  # padded positions are attention-masked; any non-mask id works
    return int(mask), int(pad)


def _max_length(model: torch.nn.Module) -> Optional[int]:
    config = getattr(model, "config", None)
    for field in ("max_sequence_length", "max_position_embeddings"):
        value = getattr(config, field, None)
        if value:
            return int(value)
    return None


def _check_request(prompt: torch.Tensor, answer: torch.Tensor, index: Optional[int], max_len: Optional[int]) -> None:
    where = "" if index is None else f" (request {index})"
    if answer.numel() == 0:
        raise ValueError(f"answer_ids is empty{where}: the log-likelihood of an empty continuation is undefined")
    total = prompt.numel() + answer.numel()
    if max_len is not None and total > max_len:
        raise ValueError(
            f"prompt_ids + answer_ids have {prompt.numel()} + {answer.numel()} = {total} tokens{where}, longer than "
            f"the model's max_sequence_length={max_len}"
        )


@dataclass
class _Segment:
    """Rows of one request to score: contribution of row r goes to unit `units[r]` with weight `weights[r]`."""

    request: int
    units: torch.Tensor  # long (R,)
    weights: torch.Tensor  # float64 (R,)
    is_masked: torch.Tensor  # bool (R, L)

    def __len__(self) -> int:
        return int(self.units.numel())

    def split(self, n: int) -> tuple["_Segment", "_Segment"]:
        head = _Segment(self.request, self.units[:n], self.weights[:n], self.is_masked[:n])
        tail = _Segment(self.request, self.units[n:], self.weights[n:], self.is_masked[n:])
        return head, tail


class _Scorer:
    """Packs rows of many requests into model forwards and accumulates weighted masked log-probs."""

    def __init__(self, model, prompts, answers, *, cfg_scale, rows_per_forward, mask_token_id=None):
        self.model = model
        self.prompts = prompts
        self.answers = answers
        self.cfg_scale = float(cfg_scale)
        self.rows_per_forward = int(rows_per_forward)
        self.mask_id, self.pad_id = _special_ids(model, mask_token_id)
        self.device = _model_device(model)
        self.num_forwards = 0

    def logits(self, ids: torch.Tensor, attention_mask: Optional[torch.Tensor], prompt_pos: torch.Tensor) -> torch.Tensor:
        """Model logits, with classifier-free guidance u + (w + 1)(c - u) when cfg_scale > 0."""
        if self.cfg_scale > 0:
            uncond = ids.masked_fill(prompt_pos, self.mask_id)
            ids = torch.cat([ids, uncond])
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask])
        out = self.model(input_ids=ids, attention_mask=attention_mask).logits
        self.num_forwards += 1
        if self.cfg_scale > 0:
            cond, uncond = out.chunk(2, dim=0)
            out = uncond + (self.cfg_scale + 1.0) * (cond - uncond)
        return out

    def run(self, segments: Iterator[_Segment]) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Score all rows; returns request -> [(units, contribution)], contribution = weight * sum log p."""
        results: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        chunk: list[_Segment] = []
        size = 0
        for seg in segments:
            while len(seg):
                take = min(len(seg), self.rows_per_forward - size)
                head, seg = seg.split(take)
                chunk.append(head)
                size += take
                if size == self.rows_per_forward:
                    results.extend(self._forward_chunk(chunk))
                    chunk, size = [], 0
        if chunk:
            results.extend(self._forward_chunk(chunk))
        grouped: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for request, units, contrib in results:
            grouped.setdefault(request, []).append((units, contrib))
        return grouped

    def _forward_chunk(self, chunk: list[_Segment]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        lengths = [self.prompts[s.request].numel() + self.answers[s.request].numel() for s in chunk]
        width = max(lengths)
        rows = sum(len(s) for s in chunk)
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        targets = torch.zeros((rows, width), dtype=torch.long)
        selected = torch.zeros((rows, width), dtype=torch.bool)
        prompt_pos = torch.zeros((rows, width), dtype=torch.bool)
        attention = torch.zeros((rows, width), dtype=torch.long)
        r = 0
        for seg, total in zip(chunk, lengths):
            prompt, answer = self.prompts[seg.request], self.answers[seg.request]
            P, n = prompt.numel(), len(seg)
            ids[r:r + n, :P] = prompt
            ids[r:r + n, P:total] = torch.where(seg.is_masked, self.mask_id, answer)
            targets[r:r + n, P:total] = answer
            selected[r:r + n, P:total] = seg.is_masked
            prompt_pos[r:r + n, :P] = True
            attention[r:r + n, :total] = 1
            r += n
        # Right padding keeps every row's RoPE positions 0..T-1, so a padded row scores like the unpadded one.
        attention_mask = None if all(t == width for t in lengths) else attention.to(self.device)
        logits = self.logits(ids.to(self.device), attention_mask, prompt_pos.to(self.device))
        sel = selected.to(self.device)
        logp = torch.log_softmax(logits[sel].float(), dim=-1)
        token_logp = logp.gather(1, targets.to(self.device)[sel][:, None]).squeeze(1)
        row_of = torch.arange(rows, device=self.device)[:, None].expand(rows, width)[sel]
        row_sum = torch.zeros(rows, dtype=token_logp.dtype, device=self.device).index_add(0, row_of, token_logp)
        out = []
        r = 0
        for seg in chunk:
            n = len(seg)
            contrib = row_sum[r:r + n].to(torch.float64) * seg.weights.to(self.device)
            out.append((seg.request, seg.units, contrib))
            r += n
        return out


def _unit_values(results: dict, request: int, num_units: int, device) -> torch.Tensor:
    """Sum the contributions of one request into its units (minibatch means, or the exact sum)."""
    values = torch.zeros(num_units, dtype=torch.float64, device=device)
    for units, contrib in results.get(request, ()):
        values = values.index_add(0, units.to(device), contrib)
    return values


def score_draws_batch(
    model: torch.nn.Module,
    requests: Sequence[tuple[IdsLike, IdsLike]],
    draws: Sequence[MaskDraws],
    *,
    cfg_scale: float = 0.0,
    rows_per_forward: Optional[int] = None,
    mask_token_id: Optional[int] = None,
) -> list[torch.Tensor]:
    """Score given mask draws for several (prompt, answer) requests, rows packed into shared forwards.

    Returns, per request, the minibatch values m_1..m_n (float64 tensor (num_batches,)) of Eq. 6:
    m = (1/b) sum_j (L / l_j) sum_{i in S_j} log p_theta(a_i | p, a^{S_j}). Their mean is the ELBO estimate.
    Runs under the caller's grad mode: with gradients enabled the values are differentiable (VRPO).
    """
    if len(requests) != len(draws):
        raise ValueError(f"score_draws_batch: {len(requests)} requests but {len(draws)} MaskDraws")
    prompts, answers = [], []
    max_len = _max_length(model)
    for i, ((p, a), d) in enumerate(zip(requests, draws)):
        prompt, answer = _as_ids(p, "prompt_ids"), _as_ids(a, "answer_ids")
        _check_request(prompt, answer, i if len(requests) > 1 else None, max_len)
        if d.answer_length != answer.numel():
            raise ValueError(
                f"draws for request {i} are for an answer of {d.answer_length} tokens, but answer_ids has {answer.numel()}"
            )
        prompts.append(prompt)
        answers.append(answer)
    rows = rows_per_forward or max(d.batch_size for d in draws)
    scorer = _Scorer(model, prompts, answers, cfg_scale=cfg_scale, rows_per_forward=rows, mask_token_id=mask_token_id)

    def segments():
        for i, d in enumerate(draws):
            units = torch.arange(d.num_batches).repeat_interleave(d.batch_size)
            yield _Segment(i, units, d.weights().reshape(-1), d.is_masked.reshape(-1, d.answer_length))

    results = scorer.run(segments())
    return [_unit_values(results, i, d.num_batches, scorer.device) for i, d in enumerate(draws)]


def score_draws(
    model: torch.nn.Module,
    prompt_ids: IdsLike,
    answer_ids: IdsLike,
    draws: MaskDraws,
    *,
    cfg_scale: float = 0.0,
    rows_per_forward: Optional[int] = None,
    mask_token_id: Optional[int] = None,
) -> torch.Tensor:
    """Minibatch values (num_batches,) of Eq. 6 for the given draws; `.mean()` is the ELBO estimate.

    The shared-randomness API: the same `draws` (from `draw_masks`) scored by two models give strongly
    correlated estimates, so their difference has a small variance (VRPO's antithetic sampling).
    Differentiable when called with gradients enabled.
    """
    return score_draws_batch(
        model, [(prompt_ids, answer_ids)], [draws], cfg_scale=cfg_scale,
        rows_per_forward=rows_per_forward, mask_token_id=mask_token_id,
    )[0]


def estimate_from_minibatches(values: torch.Tensor, *, exact: bool = False, num_samples: Optional[int] = None) -> LikelihoodEstimate:
    """Estimate and standard error from i.i.d. minibatch values m_1..m_n: mean(m), std(m, ddof=1)/sqrt(n)."""
    v = values.detach().to(torch.float64).cpu()
    n = v.numel()
    if n == 0:
        raise ValueError("estimate_from_minibatches: no minibatch values")
    if exact:
        se = 0.0
    elif n == 1:
        se = float("nan")
    else:
        se = float(v.std(unbiased=True) / math.sqrt(n))
    return LikelihoodEstimate(float(v.mean()), se, int(num_samples if num_samples is not None else n), exact)


@torch.no_grad()
def exact_mask_values(
    model: torch.nn.Module,
    prompt_ids: IdsLike,
    answer_ids: IdsLike,
    *,
    cfg_scale: float = 0.0,
    mask_token_id: Optional[int] = None,
    rows_per_forward: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(S) = sum_{i in S} log p_theta(a_i | p, a^S) for every non-empty mask S of a short answer.

    Returns (is_masked BoolTensor (2^L - 1, L) in the order of `exact_masks`, f float64 (2^L - 1,) on the CPU).
    The building block of exact variance calculations (`exact_minibatch_variance`, VRPO's
    `alignment.variance.exact_score_variance`).
    """
    prompt, answer = _as_ids(prompt_ids, "prompt_ids"), _as_ids(answer_ids, "answer_ids")
    _check_request(prompt, answer, None, _max_length(model))
    masks, _ = exact_masks(answer.numel())
    scorer = _Scorer(model, [prompt], [answer], cfg_scale=cfg_scale, rows_per_forward=rows_per_forward,
                     mask_token_id=mask_token_id)
    n = masks.shape[0]
    f = _unit_values(scorer.run(iter([_Segment(0, torch.arange(n), torch.ones(n, dtype=torch.float64), masks)])), 0, n,
                     scorer.device).cpu()
    return masks, f


def mask_size_moments(masks: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) variance of per-mask values over the masks of each size l, as float64 tensors
    (L + 1,) indexed by l (entry 0 unused, 0). `masks` and `values` as returned by `exact_mask_values`."""
    L = masks.shape[1]
    size = masks.sum(dim=1)
    v = values.to(torch.float64)
    mu = torch.zeros(L + 1, dtype=torch.float64)
    s2 = torch.zeros(L + 1, dtype=torch.float64)
    for l in range(1, L + 1):
        vals = v[size == l]
        mu[l], s2[l] = vals.mean(), vals.var(unbiased=False)
    return mu, s2


@torch.no_grad()
def exact_minibatch_variance(
    model: torch.nn.Module,
    prompt_ids: IdsLike,
    answer_ids: IdsLike,
    *,
    batch_size: int = 16,
    cfg_scale: float = 0.0,
    mask_token_id: Optional[int] = None,
) -> tuple[float, float]:
    """Exact mean and variance of one stratified minibatch value m (short answers; enumerates every mask).

    With f(S) = sum_{i in S} log p_theta(a_i | p, a^S), mu(l) and s2(l) the mean and variance of f over the
    subsets of size l, and l_j(k) the stratified counts of `stratified_num_masked` for offset k:

        E[m | k] = (1/b) sum_j (L / l_j) mu(l_j),   Var[m | k] = (1/b^2) sum_j (L / l_j)^2 s2(l_j),
        Var[m] = mean_k Var[m | k] + var_k E[m | k]      (k uniform on 1..L).

    The standard error of an estimate from n minibatches is sqrt(Var[m] / n). Used to check the reported
    standard errors and to plan mc_num; returns (mean, variance).
    """
    b = int(batch_size)
    masks, f = exact_mask_values(model, prompt_ids, answer_ids, cfg_scale=cfg_scale, mask_token_id=mask_token_id,
                                 rows_per_forward=max(b, 64))
    L = masks.shape[1]
    mu, s2 = mask_size_moments(masks, f)
    cond_mean, cond_var = [], []
    for k in range(1, L + 1):
        lj = stratified_num_masked(L, b, offset=k)
        w = L / lj.to(torch.float64)
        cond_mean.append(float((w * mu[lj]).sum() / b))
        cond_var.append(float((w**2 * s2[lj]).sum() / b**2))
    cm = torch.tensor(cond_mean, dtype=torch.float64)
    return float(cm.mean()), float(torch.tensor(cond_var, dtype=torch.float64).mean() + cm.var(unbiased=False))


# --------------------------------------------------------------------------------------------- estimators


def standard_error_upper_bound(std_error: float, num_batches: int, confidence: float = ADAPTIVE_CONFIDENCE) -> float:
    """Upper `confidence` bound of the standard error given its estimate from n minibatches (adaptive stopping).

    (n - 1) s^2 / sigma^2 ~ chi^2_{n-1}, so sigma <= s sqrt((n - 1) / chi^2_{1-confidence}(n - 1)) with the given
    confidence; the chi-square quantile uses the Wilson-Hilferty approximation
    chi^2_p(k) ~ k (1 - 2/(9k) + z_p sqrt(2/(9k)))^3. With few minibatches the bound is much larger than the
    estimate (x2.3 at n = 4, x1.3 at n = 16), so a request whose few draws happen to agree does not stop early:
    the minibatch values of long answers are heavy-tailed (rows with few masked tokens carry weight L/l).
    """
    k = num_batches - 1
    if k < 1:
        return float("inf")
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - confidence, dtype=torch.float64)).item()
    c = 2.0 / (9.0 * k)
    quantile = k * max(1.0 - c + z * math.sqrt(c), 1e-3) ** 3
    return std_error * math.sqrt(k / quantile)


def _use_exact(exact: Union[bool, str], answer_length: int, mc_num: int) -> bool:
    if answer_length == 1:
        return True  # one masked token, one row: the estimator is deterministic
    if exact == "auto":
        return answer_length <= EXACT_MAX_ANSWER_LENGTH and 2**answer_length - 1 <= mc_num
    return bool(exact)


def _child_generators(
    n: int, generator: Optional[torch.Generator], seeds: Optional[Sequence[int]] = None
) -> list[torch.Generator]:
    """One independent CPU generator per request: from `seeds` if given, else seeded in order from
    `generator` (or torch's global RNG)."""
    if seeds is None:
        seeds = torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.long).tolist()
    elif len(seeds) != n:
        raise ValueError(f"seeds has {len(seeds)} entries for {n} requests")
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def log_likelihood_batch(
    model: torch.nn.Module,
    requests: Sequence[tuple[IdsLike, IdsLike]],
    *,
    mc_num: int = 128,
    batch_size: int = 16,
    cfg_scale: float = 0.0,
    exact: Union[bool, str] = False,
    generator: Optional[torch.Generator] = None,
    tolerance: Optional[float] = None,
    min_mc_num: Optional[int] = None,
    rows_per_forward: Optional[int] = None,
    mask_token_id: Optional[int] = None,
    config: Optional[LikelihoodConfig] = None,
    seeds: Optional[Sequence[int]] = None,
) -> list[LikelihoodEstimate]:
    """ELBO estimates (Eq. 6) of many (prompt_ids, answer_ids) requests, rows packed into shared forwards.

    Each request gets its own random stream, seeded in order from `generator` (or torch's global RNG), so
    the result for request i equals `log_likelihood(model, *requests[i], generator=g)` called in sequence
    with the same `g`, however the rows are packed. `seeds` (one int per request) seeds each request's
    stream directly instead, so a request's result does not depend on which other requests share the call
    (the lm-eval adapter derives them from the request text). Rows of different lengths are right-padded
    with an attention mask. See `log_likelihood` for the arguments; `config` (a LikelihoodConfig) replaces them.
    """
    cfg = config or LikelihoodConfig(
        mc_num=mc_num, batch_size=batch_size, cfg_scale=cfg_scale, exact=exact,
        tolerance=tolerance, min_mc_num=min_mc_num, rows_per_forward=rows_per_forward,
    )
    if len(requests) == 0:
        return []
    max_len = _max_length(model)
    prompts, answers = [], []
    for i, req in enumerate(requests):
        if not isinstance(req, (tuple, list)) or len(req) != 2:
            raise ValueError(f"request {i} must be a (prompt_ids, answer_ids) pair, got {type(req).__name__}")
        prompt, answer = _as_ids(req[0], "prompt_ids"), _as_ids(req[1], "answer_ids")
        _check_request(prompt, answer, i if len(requests) > 1 else None, max_len)
        prompts.append(prompt)
        answers.append(answer)

    gens = _child_generators(len(requests), generator, seeds)
    scorer = _Scorer(model, prompts, answers, cfg_scale=cfg.cfg_scale,
                     rows_per_forward=cfg.rows_per_forward or cfg.batch_size, mask_token_id=mask_token_id)
    b = cfg.batch_size
    is_exact = [_use_exact(cfg.exact, a.numel(), cfg.mc_num) for a in answers]
    values: list[list[torch.Tensor]] = [[] for _ in requests]  # minibatch values per request, in order
    drawn = [0] * len(requests)  # minibatches drawn so far
    want = [0 if is_exact[i] else (cfg.num_batches if cfg.tolerance is None else cfg.adaptive_min_batches)
            for i in range(len(requests))]

    # Exact requests: one unit holding the whole enumerated expectation.
    exact_idx = [i for i in range(len(requests)) if is_exact[i]]
    if exact_idx:
        def exact_segments():
            for i in exact_idx:
                masks, weights = exact_masks(answers[i].numel())
                yield _Segment(i, torch.zeros(len(weights), dtype=torch.long), weights, masks)

        results = scorer.run(exact_segments())
        for i in exact_idx:
            values[i] = [_unit_values(results, i, 1, scorer.device)]

    # Monte Carlo requests, in rounds (one round in fixed mode; adaptive mode adds minibatches until SE < tol).
    while True:
        todo = [i for i in range(len(requests)) if want[i] > drawn[i]]
        if not todo:
            break

        def mc_segments():
            for i in todo:
                L = answers[i].numel()
                for unit in range(drawn[i], want[i]):
                    d = draw_masks(L, mc_num=b, batch_size=b, generator=gens[i])
                    yield _Segment(i, torch.full((b,), unit, dtype=torch.long), d.weights().reshape(-1),
                                   d.is_masked.reshape(b, L))

        results = scorer.run(mc_segments())
        for i in todo:
            new = _unit_values(results, i, want[i], scorer.device)[drawn[i]:]
            values[i].append(new)
            drawn[i] = want[i]
            if cfg.tolerance is not None and drawn[i] < cfg.num_batches:
                v = torch.cat(values[i])
                se = standard_error_upper_bound(float(v.std(unbiased=True) / math.sqrt(v.numel())), v.numel())
                if se >= cfg.tolerance:
                    # project the number of minibatches needed (SE ~ 1/sqrt(n)), at most doubling per round
                    need = math.ceil(v.numel() * (se / cfg.tolerance) ** 2)
                    want[i] = min(cfg.num_batches, max(drawn[i] + 1, min(need, 2 * drawn[i])))

    out = []
    for i in range(len(requests)):
        v = torch.cat(values[i])
        n_samples = (2 ** answers[i].numel() - 1) if is_exact[i] else v.numel() * b
        out.append(estimate_from_minibatches(v, exact=is_exact[i], num_samples=n_samples))
    return out


def log_likelihood(
    model: torch.nn.Module,
    prompt_ids: IdsLike,
    answer_ids: IdsLike,
    *,
    mc_num: int = 128,
    batch_size: int = 16,
    cfg_scale: float = 0.0,
    exact: Union[bool, str] = False,
    generator: Optional[torch.Generator] = None,
    tolerance: Optional[float] = None,
    min_mc_num: Optional[int] = None,
    rows_per_forward: Optional[int] = None,
    mask_token_id: Optional[int] = None,
) -> LikelihoodEstimate:
    """Estimate log p(answer | prompt) by the conditional ELBO of LLaDA (Eq. 6) with its standard error.

        log p(a | p) >= E_{l ~ U{1..L}} E_{|S| = l} [ (L / l) sum_{i in S} log p_theta(a_i | p, a^S) ]

    prompt_ids, answer_ids: 1-D tensors or lists of token ids (as the reference `get_log_likelihood`).
    mc_num:     number of mask draws (default 128); must be a multiple of `batch_size` (no rounding).
    batch_size: draws per minibatch (default 16), stratified in l as the reference does.
    cfg_scale:  classifier-free guidance w: logits = u + (w + 1)(c - u), u with the prompt masked.
    exact:      True: enumerate all 2^L - 1 masks (L <= 16) and return the exact expectation, SE 0;
                "auto": do so when 2^L - 1 <= mc_num. A one-token answer is always computed exactly (one row).
    generator:  torch.Generator (CPU) for reproducible draws.
    tolerance:  adaptive mode: draw minibatches until the standard error is below the tolerance with 90%
                confidence (`standard_error_upper_bound` < tolerance); `mc_num` is then the maximum and
                `min_mc_num` (default 4 minibatches) the minimum.
    rows_per_forward: rows per model forward (default batch_size).

    Returns a `LikelihoodEstimate`: `est, se = log_likelihood(...)`, plus `.num_samples` and `.exact`.
    Raises ValueError for an empty answer, prompt + answer longer than the model's max_sequence_length,
    or mc_num not a multiple of batch_size.
    """
    return log_likelihood_batch(
        model, [(prompt_ids, answer_ids)], mc_num=mc_num, batch_size=batch_size, cfg_scale=cfg_scale,
        exact=exact, generator=generator, tolerance=tolerance, min_mc_num=min_mc_num,
        rows_per_forward=rows_per_forward, mask_token_id=mask_token_id,
    )[0]


@torch.no_grad()
def greedy_unmasking_matches(
    model: torch.nn.Module,
    requests: Sequence[tuple[IdsLike, IdsLike]],
    *,
    cfg_scale: float = 0.0,
    rows_per_forward: int = 16,
    mask_token_id: Optional[int] = None,
) -> list[bool]:
    """Whether greedy unmasking reproduces each answer (lm-eval's `is_greedy` for a diffusion LM).

    x = prompt + [MASK] * L; for L steps: at every masked position the candidate c_i = argmax_v logits_i(v)
    with confidence softmax(logits_i)[c_i]; the most confident masked position i* is committed. The answer is
    greedy iff c_{i*} = a_{i*} at every step (the target is committed, so later steps see the true prefix).
    This is exactly "the low-confidence sampler at temperature 0 with one token per step (steps = gen_length
    = block_length = L) generates the answer". Costs L forwards per request (rows batched across requests).
    """
    if rows_per_forward < 1:
        raise ValueError(f"rows_per_forward must be >= 1, got {rows_per_forward}")
    max_len = _max_length(model)
    prompts, answers = [], []
    for i, (p, a) in enumerate(requests):
        prompt, answer = _as_ids(p, "prompt_ids"), _as_ids(a, "answer_ids")
        _check_request(prompt, answer, i if len(requests) > 1 else None, max_len)
        prompts.append(prompt)
        answers.append(answer)
    scorer = _Scorer(model, prompts, answers, cfg_scale=cfg_scale, rows_per_forward=rows_per_forward,
                     mask_token_id=mask_token_id)
    mask_id, device = scorer.mask_id, scorer.device
    # current state of each request: its answer region (mask id where not yet committed)
    state = [torch.full_like(a, mask_id) for a in answers]
    alive = [True] * len(requests)
    for _ in range(max((a.numel() for a in answers), default=0)):
        todo = [i for i in range(len(requests)) if alive[i] and bool((state[i] == mask_id).any())]
        if not todo:
            break
        for start in range(0, len(todo), rows_per_forward):
            rows = todo[start:start + rows_per_forward]
            lengths = [prompts[i].numel() + answers[i].numel() for i in rows]
            width = max(lengths)
            ids = torch.full((len(rows), width), scorer.pad_id, dtype=torch.long)
            prompt_pos = torch.zeros((len(rows), width), dtype=torch.bool)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                P, total = prompts[i].numel(), lengths[r]
                ids[r, :P] = prompts[i]
                ids[r, P:total] = state[i]
                prompt_pos[r, :P] = True
                attention[r, :total] = 1
            attention_mask = None if all(t == width for t in lengths) else attention.to(device)
            logits = scorer.logits(ids.to(device), attention_mask, prompt_pos.to(device))
            for r, i in enumerate(rows):
                P, L = prompts[i].numel(), answers[i].numel()
                probs = torch.softmax(logits[r, P:P + L].float(), dim=-1)
                conf, cand = probs.max(dim=-1)
                masked = (state[i] == mask_id).to(device)
                conf = conf.masked_fill(~masked, -1.0)
                pos = int(conf.argmax())
                if int(cand[pos]) != int(answers[i][pos]):
                    alive[i] = False
                else:
                    state[i][pos] = answers[i][pos]
    return alive


__all__ = [
    "EXACT_MAX_ANSWER_LENGTH",
    "greedy_unmasking_matches",
    "LikelihoodConfig",
    "LikelihoodEstimate",
    "MaskDraws",
    "draw_masks",
    "elbo_weight",
    "estimate_from_minibatches",
    "exact_mask_values",
    "exact_masks",
    "exact_minibatch_variance",
    "log_likelihood",
    "log_likelihood_batch",
    "mask_size_moments",
    "score_draws",
    "score_draws_batch",
    "standard_error_upper_bound",
    "stratified_num_masked",
]
