"""lm-eval adapter for LLaDA models, registered as `llada`.

    python -m eval --model_args pretrained=PATH,mc_num=128,gen_length=256,steps=256,block_length=32 \\
        --tasks llada_arith_mc,llada_reverse --apply_chat_template --output_path out/
    accelerate launch -m eval --model_args pretrained=PATH ... (data parallel; any number of processes)

(`python -m eval` / `llada eval` is the `lm_eval` command with this adapter registered and the local tasks of
`eval/tasks/` on the include path; every lm_eval flag works. lm-eval 0.4.13 does not discover models through
package entry points, so a plain `lm_eval --model llada` only works after `import eval.lm_eval_adapter`.)

Request types (the three methods of an lm-eval `LM`):

- `loglikelihood(context, continuation)`: the conditional ELBO of LLaDA (Eq. 6) from
  `llada.log_likelihood_batch` (Monte Carlo, or exact enumeration for short continuations with
  `exact=auto`), and `is_greedy` by greedy suffix unmasking (`llada.likelihood.greedy_unmasking_matches`).
- `loglikelihood_rolling(text)`: the ELBO of the whole text, cut into chunks of `rolling_chunk` tokens, each
  scored conditioned on the tokens before it (as many as fit in the context), summed (chain rule).
- `generate_until(context, gen_kwargs)`: `sampling.generate` with the `SamplerConfig` from the model args,
  overridden per task by `generation_kwargs` (any SamplerConfig field, e.g. gen_length / steps /
  block_length; `temperature`, `do_sample=False` -> temperature 0); the output is cut at the first EOS /
  `<|eot_id|>` token and at the first `until` string. `max_gen_toks` is not used (the sampler generates
  exactly `gen_length` tokens, as the reference does).

Model args (`--model_args key=value,...`):
    pretrained        Hub id or checkpoint folder (default: the embedded instruct model)
    tokenizer         tokenizer folder (default: the checkpoint folder)
    dtype             auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16 | float16
    mc_num, mc_batch_size, exact, tolerance, min_mc_num, rows_per_forward   the ELBO (`LikelihoodConfig`;
                      mc_batch_size is the estimator's minibatch, `--batch_size` the number of requests
                      packed per call); defaults mc_num=128, mc_batch_size=16, exact=auto
    cfg_scale         classifier-free guidance for both the ELBO and the sampler
    greedy_check      compute is_greedy (default true; L forwards per continuation)
    rolling_chunk     tokens per chunk of loglikelihood_rolling (default: half the context)
    seed              base seed; each request's draws are seeded from it and the request's text, so results
                      do not depend on batching, ordering or the number of processes
    steps, gen_length, block_length, temperature, remasking, ... any `SamplerConfig` field.

Distributed: under `accelerate launch` with several processes, each process evaluates its shard of the
documents (lm-eval splits them by rank) and the results are gathered on rank 0; one process needs no
accelerate state at all.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import fields
from typing import Any, Optional

import torch
from tqdm import tqdm

import lm_eval.models  # noqa: F401  (registers lm-eval's own models first, so they stay available)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

import llada  # noqa: F401  (registers the model type with transformers)
from llada.likelihood import LikelihoodConfig, greedy_unmasking_matches, log_likelihood_batch
from llada.tokenization import chat_template_of, decode_answer, special_token_ids

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_LIKELIHOOD_ARGS = ("mc_num", "exact", "tolerance", "min_mc_num", "rows_per_forward")


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"model arg {name} must be true or false, got {value!r}")


def _sampler_fields() -> dict[str, Any]:
    from sampling import SamplerConfig

    return {f.name: f for f in fields(SamplerConfig)}


def _coerce_sampler_value(name: str, value: Any) -> Any:
    """Model args / gen_kwargs arrive as str, int, float or bool; coerce to the SamplerConfig field's type."""
    from sampling import SamplerConfig

    default = getattr(SamplerConfig(), name)
    if value is None:
        return None
    if name == "suppress_tokens":
        if isinstance(value, str):
            return tuple(int(t) for t in value.replace(":", " ").split())
        return tuple(int(t) for t in (value if isinstance(value, (list, tuple)) else [value]))
    if isinstance(default, bool):
        return _as_bool(value, name)
    if name in ("temperature", "cfg_scale", "threshold", "factor"):
        return float(value)
    if name in ("remasking", "cache"):
        return str(value)
    return int(value)


def request_seed(base_seed: int, *parts: str) -> int:
    """A 62-bit seed from the base seed and a request's text: the same request gets the same draws in every
    batch, order and process."""
    h = hashlib.sha256(repr((int(base_seed),) + tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") >> 2


@register_model("llada")
class LLaDAEvalModel(TemplateLM):
    """LLaDA as an lm-eval `LM` (see the module docstring for the model args)."""

    backend = "causal"  # context and continuation are tokenized together, then split
    default_role = "instruct"  # the embedded model used when no `pretrained` is given (llada.defaults)

    def __init__(
        self,
        pretrained: Optional[str] = None,
        tokenizer: Optional[str] = None,
        dtype: str = "auto",
        device: Optional[str] = None,
        batch_size: Any = 1,
        max_batch_size: Optional[int] = None,
        mc_num: int = 128,
        mc_batch_size: int = 16,
        cfg_scale: float = 0.0,
        exact: Any = "auto",
        tolerance: Optional[float] = None,
        min_mc_num: Optional[int] = None,
        rows_per_forward: Optional[int] = None,
        greedy_check: Any = True,
        rolling_chunk: Optional[int] = None,
        seed: int = 1234,
        **sampler_args: Any,
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        from llada.defaults import resolve_model
        from sampling import SamplerConfig

        # ----------------------------------------------------------- settings
        known = _sampler_fields()
        unknown = sorted(set(sampler_args) - set(known))
        if unknown:
            raise ValueError(
                f"unknown llada model arg(s): {', '.join(unknown)}; the ELBO takes mc_num, mc_batch_size, exact, "
                f"tolerance, min_mc_num, rows_per_forward, cfg_scale, greedy_check, rolling_chunk, seed; the "
                f"sampler takes {', '.join(known)}"
            )
        if isinstance(exact, str) and exact.lower() != "auto":
            exact = _as_bool(exact, "exact")
        self.likelihood_config = LikelihoodConfig(
            mc_num=int(mc_num), batch_size=int(mc_batch_size), cfg_scale=float(cfg_scale),
            exact=exact if exact == "auto" else bool(exact),
            tolerance=None if tolerance is None else float(tolerance),
            min_mc_num=None if min_mc_num is None else int(min_mc_num),
            rows_per_forward=None if rows_per_forward is None else int(rows_per_forward),
        )
        sampler_values = {k: _coerce_sampler_value(k, v) for k, v in sampler_args.items()}
        sampler_values.setdefault("cfg_scale", float(cfg_scale))
        self.sampler_config = SamplerConfig(**sampler_values)
        self.greedy_check = _as_bool(greedy_check, "greedy_check")
        self.seed = int(seed)
        self.batch_size = self._parse_batch_size(batch_size)

        # ----------------------------------------------------------- processes and device
        self.accelerator = None
        from accelerate import PartialState

        state = PartialState()
        if state.num_processes > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator()
            self._device = self.accelerator.device
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
        else:
            self._device = self._pick_device(device)

        # ----------------------------------------------------------- model and tokenizer
        path = resolve_model(pretrained, self.default_role)
        if dtype not in _DTYPES:
            raise ValueError(f"model arg dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if dtype == "auto":
            dtype = "bfloat16" if self._device.type == "cuda" else "float32"
        self.model = self.load_model(path, getattr(torch, dtype)).to(self._device).eval()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or path)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"no tokenizer found for {tokenizer or path!r} (lm-eval needs text); pass tokenizer=FOLDER"
            ) from err
        self.special = special_token_ids(self.tokenizer, self.model.config)
        if self.sampler_config.eot_token_id is None and self.special.eot is not None:
            self.sampler_config = self.sampler_config.replace(eot_token_id=self.special.eot)
        self.sampler_config.validate()
        self.max_length = int(self.model.config.max_sequence_length)
        self.rolling_chunk = int(rolling_chunk) if rolling_chunk is not None else max(1, self.max_length // 2)
        if not 1 <= self.rolling_chunk < self.max_length:
            raise ValueError(f"rolling_chunk must lie in 1..{self.max_length - 1}, got {self.rolling_chunk}")
        self.pretrained = path

    # ------------------------------------------------------------------------- helpers
    def load_model(self, path: str, dtype: torch.dtype):
        """The model of checkpoint `path` (a LLaDA text model here; `LLaDAVisionEvalModel` loads LLaDA-V)."""
        from llada import LLaDAModelLM

        return LLaDAModelLM.from_pretrained(path, dtype=dtype)

    @staticmethod
    def _parse_batch_size(batch_size: Any) -> int:
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            logger.warning("llada: batch_size=auto is not supported; using 8 requests per batch")
            return 8
        value = int(batch_size)
        if value < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return value

    @staticmethod
    def _pick_device(device: Optional[str]) -> torch.device:
        if device in (None, "", "auto"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            logger.warning("llada: device %s requested but CUDA is not available; using the CPU", device)
            return torch.device("cpu")
        return dev

    @property
    def eot_token_id(self) -> int:
        return self.special.eos

    @property
    def prefix_token_id(self) -> int:
        # An empty context is conditioned on BOS (LLaDA sequences start with it), else EOS.
        return self.special.bos if self.special.bos is not None else self.special.eos

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def tok_decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "llada")).replace("/", "__")

    def chat_template(self, chat_template: Any = False) -> Optional[str]:
        if chat_template is False or chat_template is None:
            return None
        return chat_template_of(self.tokenizer)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's --apply_chat_template: the checkpoint's chat template (LLaDA Instruct's if it has none)."""
        return self.tokenizer.apply_chat_template(
            chat_history, chat_template=chat_template_of(self.tokenizer), tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def _progress(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=self.rank != 0)

    def _fit(self, context: list[int], continuation: list[int]) -> list[int]:
        """Drop the oldest context tokens so that context + continuation fit in the model."""
        room = self.max_length - len(continuation)
        if room < 0:
            raise ValueError(
                f"the continuation has {len(continuation)} tokens, more than the model's "
                f"max_sequence_length={self.max_length}"
            )
        return context[-room:] if room else []

    def _elbo(self, pairs: list[tuple[list[int], list[int]]], keys: list[tuple[str, ...]], desc: str) -> list[float]:
        """ELBO estimates of (prompt ids, answer ids) pairs, `batch_size` pairs per call, longest first."""
        out: list[Optional[float]] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        todo = []
        for i in order:
            if len(pairs[i][1]) == 0:
                out[i] = 0.0  # log p(empty continuation) = 0
            else:
                todo.append(i)
        bar = self._progress(len(todo), desc)
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            results = log_likelihood_batch(
                self.model, [pairs[i] for i in idx], config=self.likelihood_config,
                seeds=[request_seed(self.seed, *keys[i]) for i in idx],
            )
            for i, r in zip(idx, results):
                out[i] = r.estimate
            bar.update(len(idx))
        bar.close()
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------- loglikelihood
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs, keys = [], []
        for (context, continuation), context_enc, continuation_enc in requests:
            pairs.append((self._fit(list(context_enc), list(continuation_enc)), list(continuation_enc)))
            keys.append((context, continuation))
        lls = self._elbo(pairs, keys, "llada loglikelihood")
        greedy = [True] * len(pairs)
        if self.greedy_check:
            idx = [i for i, (_, a) in enumerate(pairs) if a]
            order = sorted(idx, key=lambda i: -len(pairs[i][1]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                flags = greedy_unmasking_matches(
                    self.model, [pairs[i] for i in chunk], cfg_scale=self.likelihood_config.cfg_scale,
                    rows_per_forward=self.likelihood_config.rows_per_forward or self.likelihood_config.batch_size,
                )
                for i, f in zip(chunk, flags):
                    greedy[i] = f
        results = []
        for ((context, continuation), _, _), ll, g in zip(requests, lls, greedy):
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (ll, g))
            results.append((float(ll), bool(g)))
        return results

    # ------------------------------------------------------------------------- rolling
    def rolling_chunks(self, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
        """(prompt, answer) chunks covering `tokens`: answers of `rolling_chunk` tokens, each conditioned on the
        tokens before it (at most max_length - chunk of them; the first on the prefix token)."""
        chunks = []
        for start in range(0, len(tokens), self.rolling_chunk):
            answer = tokens[start:start + self.rolling_chunk]
            context = [self.prefix_token_id] + tokens[:start]
            chunks.append((self._fit(context, answer), answer))
        return chunks

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pairs, keys, owner = [], [], []
        for n, req in enumerate(requests):
            (text,) = req.args
            for k, pair in enumerate(self.rolling_chunks(self.tok_encode(text))):
                pairs.append(pair)
                keys.append((text, str(k)))
                owner.append(n)
        lls = self._elbo(pairs, keys, "llada loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for n, ll in zip(owner, lls):
            totals[n] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------------- generation
    def _request_sampler(self, gen_kwargs: dict) -> tuple[Any, list[str]]:
        """The SamplerConfig and the stop strings of one generate_until request."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        do_sample = kwargs.pop("do_sample", None)
        kwargs.pop("max_gen_toks", None)
        known = _sampler_fields()
        changes = {}
        for key, value in kwargs.items():
            if key in known:
                changes[key] = _coerce_sampler_value(key, value)
            else:
                logger.warning("llada: generation kwarg %r is not a sampler setting; ignored", key)
        if do_sample is False:
            changes["temperature"] = 0.0
        return self.sampler_config.replace(**changes).validate(), list(until)

    def postprocess_generation(self, generated: list[int], until: list[str]) -> str:
        """Cut at the first EOS / EoT token, decode, then cut at the first stop string."""
        text = decode_answer(self.tokenizer, generated, self.special)
        for stop in until:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        import sampling

        prepared = []
        for req in requests:
            context, gen_kwargs = req.args
            cfg, until = self._request_sampler(gen_kwargs)
            ids = self.tok_encode(context)
            room = self.max_length - cfg.gen_length
            if room < 1:
                raise ValueError(f"gen_length={cfg.gen_length} leaves no room for the prompt (max_length {self.max_length})")
            ids = ids[-room:] or [self.prefix_token_id]
            prepared.append((ids, cfg, until))
        out: list[Optional[str]] = [None] * len(requests)
        for idx, cfg, ids, attention_mask, generator in self._generation_batches(
                requests, prepared, "llada generate_until", disable_tqdm):
            seqs = sampling.generate(self.model, ids, attention_mask, config=cfg, generator=generator)
            for row, i in enumerate(idx):
                text = self.postprocess_generation(seqs[row, ids.shape[1]:].tolist(), prepared[i][2])
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]

    def _generation_batches(self, requests, prepared, desc: str, disable_tqdm: bool):
        """Batches of `prepared` (rows starting (prompt ids, SamplerConfig, ...)): requests with the same sampler
        settings together, longest prompts first; yields (indices, config, left-padded ids, attention mask or None,
        generator seeded by the batch's contexts when sampling is random)."""
        from llada.tokenization import left_pad

        groups: dict[str, list[int]] = {}
        for i, row in enumerate(prepared):
            groups.setdefault(repr(sorted(row[1].to_dict().items())), []).append(i)
        bar = tqdm(total=len(requests), desc=desc, disable=disable_tqdm or self.rank != 0)
        for members in groups.values():
            members.sort(key=lambda i: -len(prepared[i][0]))
            for start in range(0, len(members), self.batch_size):
                idx = members[start:start + self.batch_size]
                cfg = prepared[idx[0]][1]
                ids, mask = left_pad([prepared[i][0] for i in idx], self.special.pad, device=self._device)
                generator = None
                if cfg.temperature > 0 or cfg.remasking == "random":
                    generator = torch.Generator(device=self._device).manual_seed(
                        request_seed(self.seed, *(requests[i].args[0] for i in idx)))
                yield idx, cfg, ids, None if bool(mask.all()) else mask, generator
                bar.update(len(idx))
        bar.close()

    # ------------------------------------------------------------------------- distributed
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator is None:
            return tensor
        return self.accelerator.gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0):
        if self.accelerator is None:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def get_model_info(self) -> dict:
        return {
            "model": "llada",
            "pretrained": str(self.pretrained),
            "likelihood": vars(self.likelihood_config),
            "sampler": self.sampler_config.to_dict(),
        }


# ----------------------------------------------------------------------------------------------------------- LLaDA-V
@register_model("llada_v")
class LLaDAVisionEvalModel(LLaDAEvalModel):
    """LLaDA-V as an lm-eval model that serves image tasks (lm-eval's multimodal `generate_until`).

        python -m eval --tasks llada_shapes                      (the embedded llada-mini-vision; `llada_v` is picked
                                                                   automatically when every task is an image task)
        python -m eval --model llada_v --model_args pretrained=GSAI-ML/LLaDA-V,gen_length=128,steps=128,block_length=128 ...

    `MULTIMODAL = True` tells lm-eval this model takes image tasks: a task with `doc_to_image` sends requests
    `(context, gen_kwargs, {"visual": [PIL images]})`. Each context's `<image>` placeholders (one per image; when the
    context has none, they are put before it, as LLaVA does) become the image rows, and the answer is generated by
    `vision.generation.generate` (the shared sampler on the spliced embeddings, EOS / BOS / header ids suppressed,
    stop at `<|eot_id|>`), then cut at the first `until` string. Requests without images, and `loglikelihood` /
    `loglikelihood_rolling`, are the text model's (LLaDA-V without images is exactly its language model).

    Prompt: with `--apply_chat_template` lm-eval renders the context with the checkpoint's chat template and this
    adapter adds the llava_llada system prompt; without it, a context that is not already templated is put in the
    llava_llada template (`wrap_prompt=true`, the default: LLaDA-V only knows that format).

    Extra model args: system_prompt (default: the llava_llada one; "none" for no system turn), wrap_prompt
    (true), prompt_cache (false; true computes the image rows' keys / values once per request, an approximation).
    """

    MULTIMODAL = True
    default_role = "vision"

    def __init__(self, pretrained: Optional[str] = None, system_prompt: Optional[str] = None, wrap_prompt: Any = True,
                 prompt_cache: Any = False, **kwargs: Any) -> None:
        from vision.conversation import LLAVA_LLADA_SYSTEM_PROMPT

        super().__init__(pretrained=pretrained, **kwargs)
        if system_prompt is None:
            system_prompt = LLAVA_LLADA_SYSTEM_PROMPT
        elif str(system_prompt).lower() == "none":
            system_prompt = None
        self.system_prompt = system_prompt
        self.wrap_prompt = _as_bool(wrap_prompt, "wrap_prompt")
        self.prompt_cache = _as_bool(prompt_cache, "prompt_cache")

    def load_model(self, path: str, dtype: torch.dtype):
        from vision import LlavaLLaDAModelLM
        from vision.configuration_llava_llada import LlavaLLaDAConfig
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
        if not isinstance(config, LlavaLLaDAConfig):
            raise ValueError(f"llada_v: {path} is a {config.model_type!r} checkpoint, not LLaDA-V (llava_llada); use "
                             f"--model llada for text models")
        return LlavaLLaDAModelLM.from_pretrained(path, dtype=dtype)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The checkpoint's chat template, with the llava_llada system prompt when the history has no system turn."""
        history = list(chat_history)
        if self.system_prompt and not (history and history[0].get("role") == "system"):
            history.insert(0, {"role": "system", "content": self.system_prompt})
        return super().apply_chat_template(history, add_generation_prompt)

    def image_prompt_ids(self, context: str, num_images: int) -> list[int]:
        """Token ids of a context with one -200 per image (see the class docstring)."""
        from vision.conversation import IMAGE_PLACEHOLDER, build_messages, render_prompt, tokenize_with_images

        templated = "<|start_header_id|>" in context
        n = context.count(IMAGE_PLACEHOLDER)
        if n == 0 and num_images:
            if templated:
                raise ValueError(f"a templated context without {IMAGE_PLACEHOLDER} got {num_images} image(s); put "
                                 f"{IMAGE_PLACEHOLDER} in the task's doc_to_text")
            context = (IMAGE_PLACEHOLDER + "\n") * num_images + context
        elif n != num_images:
            raise ValueError(f"the context has {n} {IMAGE_PLACEHOLDER} placeholder(s) but the request carries "
                             f"{num_images} image(s): {context[:200]!r}")
        if not templated and self.wrap_prompt:
            context = render_prompt(self.tokenizer, build_messages(context, system=self.system_prompt))
        return tokenize_with_images(context, self.tokenizer, image_token_index=self.model.config.image_token_index)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not requests or all(len(req.args) < 3 or not (req.args[2] or {}).get("visual") for req in requests):
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        from vision.generation import generate

        prepared = []
        for req in requests:
            context, gen_kwargs = req.args[0], req.args[1]
            visuals = list((req.args[2] if len(req.args) > 2 else {}).get("visual") or [])
            if not visuals:
                raise ValueError("llada_v: a batch mixes requests with and without images; run text tasks separately")
            cfg, until = self._request_sampler(gen_kwargs)
            prepared.append((self.image_prompt_ids(context, len(visuals)), cfg, until, visuals))
        out: list[Optional[str]] = [None] * len(requests)
        for idx, cfg, ids, mask, generator in self._generation_batches(
                requests, prepared, "llada_v generate_until (images)", disable_tqdm):
            images = [im for i in idx for im in prepared[i][3]]
            result = generate(self.model, ids, images, attention_mask=mask, config=cfg, stop_sequences=["<|eot_id|>"],
                              tokenizer=self.tokenizer, generator=generator, return_dict=True,
                              prompt_cache=self.prompt_cache)
            for row, i in enumerate(idx):
                kept = result.sequences[row, : int(result.lengths[row])].tolist()
                text = self.postprocess_generation(kept, prepared[i][2])
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]

    def get_model_info(self) -> dict:
        return {**super().get_model_info(), "model": "llada_v", "system_prompt": self.system_prompt}


__all__ = ["LLaDAEvalModel", "LLaDAVisionEvalModel", "request_seed"]
