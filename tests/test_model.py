"""The native LLaDA backbone against the reference fixture, plus loading, saving and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import llada
from llada import CheckpointError, LLaDAConfig, LLaDAModelLM, convert_llama_state_dict
from llada.configuration_llada import LLAMA_DIALECT_FIELDS
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

TOL = 1e-4


def _check_case(logits, exp, case, keep=None):
    flat = logits.reshape(-1, logits.shape[-1]) if keep is None else logits[keep]
    probe = exp["probe_ids"]
    assert flat.shape[0] == exp[f"{case}.logsumexp"].shape[0]
    assert (flat[:, probe] - exp[f"{case}.probe_logits"]).abs().max().item() <= TOL
    assert (flat.logsumexp(-1) - exp[f"{case}.logsumexp"]).abs().max().item() <= TOL
    assert torch.equal(flat.argmax(-1), exp[f"{case}.argmax"])


def _logits(model, exp, case):
    with torch.no_grad():
        if case == "forward":
            return model(exp["forward.input_ids"]).logits, None
        am = exp["padded.attention_mask"]
        return model(exp["padded.input_ids"], attention_mask=am).logits, am.bool()


# ---------------------------------------------------------------- fixture parity


def test_automodel_uses_native_class_despite_auto_map(llada_tiny_path):
    raw = json.loads((llada_tiny_path / "config.json").read_text())
    assert "auto_map" in raw  # the real checkpoints point at remote code
    config = AutoConfig.from_pretrained(str(llada_tiny_path))
    assert type(config) is LLaDAConfig
    model = AutoModelForCausalLM.from_pretrained(str(llada_tiny_path))
    assert type(model) is LLaDAModelLM


@pytest.mark.parametrize("case", ["forward", "padded"])
def test_fixture_logits(tiny_model, tiny_expected, case):
    exp, _ = tiny_expected
    logits, keep = _logits(tiny_model, exp, case)
    _check_case(logits, exp, case, keep)


def test_config_keeps_every_hub_field(llada_tiny_path, tiny_model):
    raw = json.loads((llada_tiny_path / "config.json").read_text())
    cfg = tiny_model.config.to_dict()
    for key, value in raw.items():
        if key in ("torch_dtype", "transformers_version"):
            continue
        assert key in cfg, key
        assert cfg[key] == value, (key, cfg[key], value)
    assert tiny_model.config.hidden_size == raw["d_model"]  # LLaMA-style alias


def test_state_dict_keys_match_checkpoint(llada_tiny_path, tiny_model):
    ckpt = load_file(str(llada_tiny_path / "model.safetensors"))
    assert set(ckpt) == set(tiny_model.state_dict())


def test_bf16_weights_kept_in_bf16(llada_tiny_path):
    model = LLaDAModelLM.from_pretrained(str(llada_tiny_path), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    out = model(torch.tensor([[1, 2, 3, model.config.mask_token_id]])).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------- dialects and GQA


def _llama_dialect_copy(src: Path, dst: Path) -> Path:
    """The same weights and sizes under LLaDA-V's LLaMA-style key names and config fields."""
    dst.mkdir(parents=True)
    raw = json.loads((src / "config.json").read_text())
    inverse = {v: k for k, v in LLAMA_DIALECT_FIELDS.items()}
    cfg = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "vocab_size": raw["vocab_size"],
           "rms_norm_eps": raw["rms_norm_eps"], "rope_theta": raw["rope_theta"], "eos_token_id": raw["eos_token_id"],
           "pad_token_id": raw["pad_token_id"], "hidden_act": "silu"}
    for olmo in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "max_sequence_length", "weight_tying"):
        cfg[inverse[olmo]] = raw[olmo]
    cfg["max_position_embeddings"] = 16384
    (dst / "config.json").write_text(json.dumps(cfg))
    sd = load_file(str(src / "model.safetensors"))
    llama = {}
    for k, v in sd.items():
        k2 = (k.replace("model.transformer.wte.", "model.embed_tokens.")
               .replace("model.transformer.ln_f.", "model.norm.")
               .replace("model.transformer.ff_out.", "lm_head."))
        if ".blocks." in k2:
            k2 = k2.replace("model.transformer.blocks.", "model.layers.")
            for a, b in (("q_proj", "self_attn.q_proj"), ("k_proj", "self_attn.k_proj"), ("v_proj", "self_attn.v_proj"),
                         ("attn_out", "self_attn.o_proj"), ("ff_proj", "mlp.gate_proj"), ("up_proj", "mlp.up_proj"),
                         ("ff_out", "mlp.down_proj"), ("attn_norm", "input_layernorm"), ("ff_norm", "post_attention_layernorm")):
                if k2.endswith("." + a + ".weight"):
                    k2 = k2[: -len(a + ".weight")] + b + ".weight"
                    break
        llama[k2] = v
    assert not any("transformer" in k for k in llama)
    save_file(llama, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_llama_key_named_copy_loads_and_agrees(llada_tiny_path, tiny_expected, tmp_path):
    exp, _ = tiny_expected
    path = _llama_dialect_copy(llada_tiny_path, tmp_path / "llama")
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    assert type(model) is LLaDAModelLM
    assert model.config.max_sequence_length == 16384 and model.config.mask_token_id == 126336
    for case in ("forward", "padded"):
        logits, keep = _logits(model, exp, case)
        _check_case(logits, exp, case, keep)
    # saving writes the Hub LLaDA names, and that reloads identically
    model.save_pretrained(tmp_path / "resaved")
    keys = set(load_file(str(tmp_path / "resaved" / "model.safetensors")))
    assert keys == set(load_file(str(llada_tiny_path / "model.safetensors")))


def test_convert_llama_state_dict_table():
    sd = {"model.layers.3.self_attn.o_proj.weight": 0, "model.layers.3.self_attn.k_proj.weight": 1,
          "model.layers.0.mlp.down_proj.weight": 2, "lm_head.weight": 3, "model.norm.weight": 4,
          "model.embed_tokens.weight": 5, "model.layers.1.post_attention_layernorm.weight": 6}
    assert convert_llama_state_dict(sd) == {
        "model.transformer.blocks.3.attn_out.weight": 0, "model.transformer.blocks.3.k_proj.weight": 1,
        "model.transformer.blocks.0.ff_out.weight": 2, "model.transformer.ff_out.weight": 3,
        "model.transformer.ln_f.weight": 4, "model.transformer.wte.weight": 5,
        "model.transformer.blocks.1.ff_norm.weight": 6}


def _gqa_config(**kw):
    base = dict(d_model=64, n_heads=8, n_kv_heads=2, n_layers=2, mlp_hidden_size=96, vocab_size=300,
                embedding_size=300, max_sequence_length=64, mask_token_id=299, eos_token_id=298, pad_token_id=298)
    base.update(kw)
    return LLaDAConfig(**base)


def test_gqa_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = LLaDAModelLM(_gqa_config()).eval()
    mha = LLaDAModelLM(_gqa_config(n_kv_heads=8)).eval()
    sd = gqa.state_dict()
    hd = 8
    for k, v in list(sd.items()):
        if k.endswith(("k_proj.weight", "v_proj.weight")):
            # each kv head serves n_heads / n_kv_heads = 4 consecutive query heads
            sd[k] = v.view(2, hd, 64).repeat_interleave(4, dim=0).reshape(8 * hd, 64)
    mha.load_state_dict(sd)
    ids = torch.randint(0, 300, (2, 10))
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 10])
    with torch.no_grad():
        assert torch.allclose(gqa(ids, attention_mask=am).logits, mha(ids, attention_mask=am).logits, atol=1e-5)


def test_gqa_save_reload(tmp_path):
    torch.manual_seed(0)
    model = LLaDAModelLM(_gqa_config()).eval()
    model.save_pretrained(tmp_path / "gqa")
    again = AutoModel.from_pretrained(str(tmp_path / "gqa")).eval()
    assert again.config.num_kv_heads == 2
    assert again.model.transformer.blocks[0].k_proj.weight.shape == (16, 64)
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


# ---------------------------------------------------------------- model behaviour


def test_bidirectional_attention(tiny_model):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    changed = ids.clone()
    changed[0, -1] = 11
    with torch.no_grad():
        a, b = tiny_model(ids).logits, tiny_model(changed).logits
    assert not torch.allclose(a[0, 0], b[0, 0])  # the first position sees the last one


def test_inputs_embeds_equals_input_ids(tiny_model, tiny_expected):
    exp, _ = tiny_expected
    ids = exp["forward.input_ids"]
    with torch.no_grad():
        emb = tiny_model.get_input_embeddings()(ids)
        assert torch.equal(tiny_model(inputs_embeds=emb).logits, tiny_model(ids).logits)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model(ids, inputs_embeds=emb)


def test_kv_cache_reproduces_full_forward(tiny_model):
    ids = torch.randint(0, 1000, (2, 14))
    am = torch.ones(2, 14, dtype=torch.long)
    am[0, :3] = 0
    with torch.no_grad():
        full = tiny_model(ids, attention_mask=am).logits
        prefix = tiny_model(ids[:, :9], attention_mask=am[:, :9], use_cache=True).past_key_values
        full_kv = tiny_model(ids, attention_mask=am, use_cache=True).past_key_values
        assert len(full_kv) == tiny_model.config.n_layers
        # layer-0 keys depend only on the tokens themselves: the prefix cache equals the full forward's
        assert torch.allclose(prefix[0][0], full_kv[0][0][:, :, :9], atol=1e-6)
        # feeding the full cache and recomputing the last tokens at their absolute positions gives the
        # full forward's logits for them (keys of every layer are the full forward's)
        last = 4
        past = [(k[:, :, :-last], v[:, :, :-last]) for k, v in full_kv]
        tail = tiny_model(ids[:, -last:], attention_mask=am, past_key_values=past).logits
    assert torch.allclose(tail, full[:, -last:], atol=1e-5)


def test_gradient_checkpointing_same_gradients(llada_tiny_path):
    ids = torch.randint(0, 1000, (2, 8))
    grads = []
    for ckpt in (False, True):
        model = LLaDAModelLM.from_pretrained(str(llada_tiny_path), dtype=torch.float32)
        model.train()
        if ckpt:
            model.activation_checkpointing_enable()
            assert model.model.gradient_checkpointing
        out = model(ids, labels=ids)
        out.loss.backward()
        grads.append(model.model.transformer.blocks[0].up_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_output_is_standard_transformers_output(tiny_model):
    from transformers.modeling_outputs import ModelOutput

    out = tiny_model(torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    assert isinstance(out, ModelOutput) and out.logits.shape == (1, 3, 126464)
    assert len(out.hidden_states) == tiny_model.config.n_layers + 1


# ---------------------------------------------------------------- save / reload


def test_save_reload_identical(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "saved")
    again = AutoModel.from_pretrained(str(tmp_path / "saved")).eval()
    ids = torch.tensor([[1, 2, 126336, 4]])
    with torch.no_grad():
        assert torch.equal(tiny_model(ids).logits, again(ids).logits)


def test_sharded_save_reloads(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "sharded", max_shard_size="5MB")
    files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    again = AutoModel.from_pretrained(str(tmp_path / "sharded")).eval()
    ids = torch.tensor([[7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(tiny_model(ids).logits, again(ids).logits)


def test_device_map_and_low_memory_init(llada_tiny_path):
    model = AutoModel.from_pretrained(str(llada_tiny_path), dtype=torch.float32, device_map="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not any(p.is_meta for p in model.parameters())


# ---------------------------------------------------------------- bad input


def test_folder_without_weights(llada_tiny_path, tmp_path):
    shutil.copy(llada_tiny_path / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no weights found"):
        AutoModel.from_pretrained(str(tmp_path))


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no config.json"):
        LLaDAModelLM.from_pretrained(str(tmp_path))


def _copy_with_weights(llada_tiny_path, dst, edit):
    dst.mkdir()
    shutil.copy(llada_tiny_path / "config.json", dst / "config.json")
    sd = load_file(str(llada_tiny_path / "model.safetensors"))
    edit(sd)
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_tensor(llada_tiny_path, tmp_path):
    path = _copy_with_weights(llada_tiny_path, tmp_path / "m", lambda sd: sd.pop("model.transformer.blocks.1.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor.*blocks\.1\.up_proj"):
        AutoModel.from_pretrained(str(path))


def test_misshapen_tensor(llada_tiny_path, tmp_path):
    def edit(sd):
        sd["model.transformer.blocks.0.q_proj.weight"] = sd["model.transformer.blocks.0.q_proj.weight"][:16]

    path = _copy_with_weights(llada_tiny_path, tmp_path / "m", edit)
    with pytest.raises(Exception, match=r"blocks\.0\.q_proj"):
        AutoModel.from_pretrained(str(path))


def test_wrong_model_type(llada_tiny_path, tmp_path):
    raw = json.loads((llada_tiny_path / "config.json").read_text())
    raw["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    shutil.copy(llada_tiny_path / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="model_type='llama'.*not a LLaDA checkpoint"):
        LLaDAModelLM.from_pretrained(str(tmp_path))


def test_sequence_longer_than_max(tiny_model):
    n = tiny_model.config.max_sequence_length + 1
    with pytest.raises(ValueError, match="max_sequence_length=4096"):
        tiny_model(torch.zeros(1, n, dtype=torch.long))


def test_token_id_out_of_vocabulary(tiny_model):
    with pytest.raises(ValueError, match="input_ids must lie in"):
        tiny_model(torch.tensor([[1, 126464]]))


def test_pickle_checkpoint_refused_unless_allowed(tiny_model, tmp_path):
    path = tmp_path / "pickled"
    _save_pickle(tiny_model, path)
    assert (path / "pytorch_model.bin").is_file() and not (path / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match="pickle"):
        AutoModel.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path), allow_pickle=True).eval()
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_model(ids).logits)


def _save_pickle(model, path: Path) -> None:
    path.mkdir()
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")


def test_unsupported_architecture_fields():
    with pytest.raises(ValueError, match="alibi"):
        LLaDAConfig(d_model=32, n_heads=4, n_layers=1, alibi=True)
    with pytest.raises(ValueError, match="n_kv_heads"):
        LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=3, n_layers=1)


def test_registration_on_import():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    assert CONFIG_MAPPING["llada"] is LLaDAConfig
    assert llada.LLaDAModelLM is LLaDAModelLM


# ---------------------------------------------------------------- quantization (bitsandbytes on CPU)


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_quantization(tmp_path, bits):
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    torch.manual_seed(0)
    # widths >= 128: bitsandbytes' CPU 4-bit kernels work on blocks of 64 along each row
    cfg = _gqa_config(d_model=128, n_heads=4, n_kv_heads=2, mlp_hidden_size=256)
    LLaDAModelLM(cfg).save_pretrained(tmp_path / "m")
    ref = AutoModel.from_pretrained(str(tmp_path / "m"), dtype=torch.float32).eval()
    qcfg = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    q = AutoModel.from_pretrained(str(tmp_path / "m"), quantization_config=qcfg, dtype=torch.float32, device_map="cpu").eval()
    expected = bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit
    assert isinstance(q.model.transformer.blocks[0].q_proj, expected)
    assert type(q.model.transformer.ff_out) is torch.nn.Linear  # the LM head stays in full precision
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        a, b = q(ids).logits.float().flatten(), ref(ids).logits.flatten()
    # NF4 of Gaussian-initialised weights keeps the logits ~0.98 correlated; 8-bit ~0.999
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > (0.99 if bits == 8 else 0.95)


def test_logits_to_keep(tiny_model):
    ids = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        full = tiny_model(ids).logits
        assert torch.allclose(tiny_model(ids, logits_to_keep=3).logits, full[:, -3:], atol=1e-6)
        assert torch.allclose(tiny_model(ids, logits_to_keep=slice(2, 5)).logits, full[:, 2:5], atol=1e-6)
        assert torch.allclose(tiny_model(ids, logits_to_keep=torch.tensor([0, 8])).logits, full[:, [0, 8]], atol=1e-6)
        assert torch.equal(tiny_model(ids, logits_to_keep=0).logits, full)
    with pytest.raises(ValueError, match="labels"):
        tiny_model(ids, labels=ids, logits_to_keep=2)
