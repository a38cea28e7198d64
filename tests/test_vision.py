"""LLaDA-V against the reference fixture `llada-v-tiny` (official LLaDA-V code, float32, CPU).

Tolerances are those stated in the fixture's expected.json: pixel values exact, image features 1e-4,
probe logits 2e-3, logsumexp 1e-4, argmax identical where the stored margin > 2e-3, generated ids
identical.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import LLADA_V_TINY


@pytest.fixture(scope="module")
def v_expected():
    if not (LLADA_V_TINY / "config.json").is_file():
        pytest.fail(f"reference fixture missing: {LLADA_V_TINY}")
    return load_file(str(LLADA_V_TINY / "expected.safetensors")), json.loads((LLADA_V_TINY / "expected.json").read_text())


@pytest.fixture(scope="module")
def v_model():
    import vision  # noqa: F401  (registers llava_llada)
    from transformers import AutoModel

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return AutoModel.from_pretrained(str(LLADA_V_TINY), dtype=torch.float32).eval()


def _image_sizes(case: dict) -> list[tuple[int, int]]:
    return [tuple(s) for s in case["image_sizes_wh"]]


# ----------------------------------------------------------------------------------------- loading
def test_automodel_loads_native_class_and_config(v_model):
    from transformers import AutoConfig

    from vision import LlavaLLaDAConfig, LlavaLLaDAModelLM

    raw = json.loads((LLADA_V_TINY / "config.json").read_text())
    assert "auto_map" not in raw  # loaded natively, by model_type
    config = AutoConfig.from_pretrained(str(LLADA_V_TINY))
    assert isinstance(config, LlavaLLaDAConfig) and isinstance(v_model, LlavaLLaDAModelLM)
    # LLaMA-dialect fields mapped, family mask id applied, the tower's config read from the sub-folder
    assert (config.d_model, config.n_heads, config.n_layers, config.mlp_hidden_size) == (32, 4, 2, 96)
    assert config.mask_token_id == 126336 and config.max_sequence_length == 16384
    tower_cfg = json.loads((LLADA_V_TINY / raw["mm_vision_tower"] / "config.json").read_text())
    assert config.vision_config.num_hidden_layers == tower_cfg["num_hidden_layers"] == 3
    assert config.mm_hidden_size == tower_cfg["hidden_size"] == 24
    # select layer -2: the last encoder layer is dropped, no pooling head
    tower = v_model.model.vision_tower.vision_tower
    assert len(tower.encoder.layers) == 2 and not hasattr(tower, "head")
    assert [type(m).__name__ for m in v_model.model.mm_projector] == ["Linear", "GELU", "Linear"]


def test_every_checkpoint_tensor_is_loaded_exactly(v_model):
    from vision.modeling_llava_llada import llava_llada_key_mapping

    checkpoint = load_file(str(LLADA_V_TINY / "model.safetensors"))
    state = v_model.state_dict()
    mapping = llava_llada_key_mapping()
    assert len(checkpoint) == len(state)
    for key, value in checkpoint.items():
        name = key
        for pattern, repl in mapping.items():
            name = re.sub(pattern, repl, name)
        name = name.replace("vision_tower.vision_model.", "vision_tower.")  # transformers 5's SigLIP layout
        assert torch.equal(state[name].to(torch.bfloat16), value), key
    assert "model.transformer.blocks.0.q_proj.weight" in state
    assert "model.vision_tower.vision_tower.encoder.layers.0.self_attn.q_proj.weight" in state


# ----------------------------------------------------------------------------------------- features
def test_pixel_values_exact(v_expected):
    from vision import ImageProcessingConfig, process_image

    tensors, meta = v_expected
    case = meta["cases"]["image_features"]
    pixel_values, size = process_image(LLADA_V_TINY / case["image"], ImageProcessingConfig(aspect_ratio="pad"))
    assert size == tuple(case["image_size_wh"])
    assert torch.equal(pixel_values, tensors["image.pixel_values"])


def test_tower_projector_and_merged_rows(v_model, v_expected):
    tensors, meta = v_expected
    pv = tensors["image.pixel_values"]
    with torch.no_grad():
        vision_features = v_model.model.vision_tower(pv)
        encoded = v_model.encode_images(pv)
        merged = v_model.image_rows([pv[0]], [tuple(meta["cases"]["image_features"]["image_size_wh"])])[0]
    torch.testing.assert_close(vision_features, tensors["image_features.vision"], atol=1e-4, rtol=0)
    torch.testing.assert_close(encoded, tensors["image_features.encoded"], atol=1e-4, rtol=0)
    assert merged.shape[0] == meta["cases"]["image_features"]["n_image_tokens"] == 730
    torch.testing.assert_close(merged, tensors["image_features.merged"], atol=1e-4, rtol=0)
    torch.testing.assert_close(merged[-1], v_model.model.image_newline)  # 729 rows then one newline


def _compare_logits(logits, tensors, name):
    probe = tensors["probe_ids"]
    torch.testing.assert_close(logits[:, probe], tensors[f"{name}.probe_logits"], atol=2e-3, rtol=0)
    torch.testing.assert_close(logits.logsumexp(-1), tensors[f"{name}.logsumexp"], atol=1e-4, rtol=0)
    argmax, expected, margin = logits.argmax(-1), tensors[f"{name}.argmax"], tensors[f"{name}.argmax_margin"]
    assert torch.equal(argmax[margin > 2e-3], expected[margin > 2e-3])
    top2 = logits.topk(2, dim=-1).indices
    close = margin <= 2e-3
    assert bool(((top2[close] == expected[close, None]).any(-1)).all())


def test_multimodal_forward_logits(v_model, v_expected):
    tensors, meta = v_expected
    case = meta["cases"]["forward"]
    ids = tensors["forward.input_ids"][None]
    with torch.no_grad():
        out = v_model(ids, images=[tensors["image.pixel_values"]], image_sizes=_image_sizes(meta["cases"]["generate"]))
    assert out.logits.shape == (1, case["spliced_length"], meta["ids"]["vocab_size"])
    assert out.image_spans == [[tuple(case["image_token_span"])]]
    _compare_logits(out.logits[0], tensors, "forward")


def test_text_only_is_exactly_the_text_model(v_model, v_expected):
    from llada import LLaDAConfig, LLaDAModelLM

    tensors, _ = v_expected
    ids = tensors["text_only.input_ids"][None]
    with torch.no_grad():
        logits = v_model(ids).logits
    _compare_logits(logits[0], tensors, "text_only")
    # the same weights in a plain LLaDAModelLM give bit-identical logits
    fields = {k: v for k, v in v_model.config.to_dict().items() if k in LLaDAConfig().to_dict() and k != "model_type"}
    text_model = LLaDAModelLM(LLaDAConfig(**fields)).eval()
    lm_state = {k: v for k, v in v_model.state_dict().items() if k.startswith("model.transformer.")}
    text_model.load_state_dict(lm_state, strict=True)
    with torch.no_grad():
        assert torch.equal(text_model(ids).logits, logits)
        # an image-less call through inputs_embeds (the official generate path) is the same computation
        assert torch.equal(v_model(inputs_embeds=v_model.embed_tokens(ids)).logits, logits)


# ----------------------------------------------------------------------------------------- generation
GENERATION_CASES = ["generate", "generate_stop", "generate_cfg", "generate_one_block", "text_only_generate"]


@pytest.mark.parametrize("name", GENERATION_CASES)
def test_generation_matches_official(v_model, v_expected, name):
    """Every generation case of the fixture, identical ids. generate_stop goes through
    `model.generate(input_ids, images=..., image_sizes=..., <sampler settings>)`, the official call shape."""
    import vision

    tensors, meta = v_expected
    case = meta["cases"][name]
    prompt = tensors["text_only_generate.input_ids" if name == "text_only_generate" else "generate.input_ids"]
    images = [tensors["image.pixel_values"]] if case["images"] else None
    sizes = _image_sizes(case) if case["images"] else None
    settings = dict(
        steps=case["steps"], gen_length=case["gen_length"], block_length=case["block_length"],
        temperature=case["temperature"], cfg_scale=case["cfg_scale"], remasking=case["remasking"],
        suppress_tokens=meta["ids"]["suppressed_at_masked_positions_in_generate"],
        stop_sequences=case["stop_token_sequences"],
    )
    expected = tensors[f"{name}.output"]
    if name == "generate_stop":
        res = v_model.generate(prompt[None], images=images, image_sizes=sizes, return_dict=True, **settings)
        out = res.sequences
        assert res.stopped.tolist() == [True] and res.lengths.tolist() == [case["output_length"]]
        assert res.prompt_length == len(prompt) - 1 + 730  # the placeholder became 730 image rows
        assert res.nfe <= case["steps"]
    else:
        out = vision.generate(v_model, prompt, images, sizes, **settings)
    assert out.shape == (1, case["output_length"])
    assert out[0].tolist() == expected.tolist()


# ----------------------------------------------------------------------------------------- errors
def test_placeholder_count_must_match_images(v_model, v_expected):
    tensors, _ = v_expected
    ids = tensors["forward.input_ids"][None]
    pv = tensors["image.pixel_values"]
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\).*2 image\(s\)"):
        v_model(ids, images=[pv, pv], image_sizes=[(64, 40), (64, 40)])
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\).*0 image\(s\)"):
        v_model(ids)
    with pytest.raises(ValueError, match=r"0 image placeholder\(s\).*1 image\(s\)"):
        v_model(tensors["text_only.input_ids"][None], images=[pv], image_sizes=[(64, 40)])
    with pytest.raises(ValueError, match="image_sizes"):
        v_model(ids, images=[pv])


def test_image_too_large_for_context(v_model, v_expected, monkeypatch):
    tensors, _ = v_expected
    monkeypatch.setattr(v_model.config, "max_sequence_length", 800)  # the spliced prompt is 803 long
    with pytest.raises(ValueError, match=r"803 positions long \(730 of them image rows\).*800"):
        v_model(tensors["forward.input_ids"][None], images=[tensors["image.pixel_values"]], image_sizes=[(64, 40)])
    import vision  # the 62-id prompt splices to 791 positions: it fits in 800 alone, not with 16 generated

    with pytest.raises(ValueError, match=r"minus gen_length \(16\)"):
        vision.generate(v_model, tensors["generate.input_ids"], [tensors["image.pixel_values"]], [(64, 40)],
                        steps=8, gen_length=16, block_length=8, suppress_tokens=[])


def test_bad_image_files(tmp_path):
    from vision import ImageError, ImageProcessingConfig, load_image, process_image

    good = (LLADA_V_TINY / "image.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="truncated.png: corrupt or truncated"):
        load_image(tmp_path / "truncated.png")
    with pytest.raises(ImageError, match="garbage.png: not an image file PIL can read"):
        load_image(tmp_path / "garbage.png")
    with pytest.raises(ImageError, match="notes.txt: not an image file PIL can read"):
        process_image(tmp_path / "notes.txt", ImageProcessingConfig())
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="larger than max_pixels"):
        load_image(LLADA_V_TINY / "image.png", max_pixels=100)
    assert load_image(good).size == (64, 40)  # bytes work too


# ----------------------------------------------------------------------------------------- anyres
def _anyres_config(aspect="anyres_max_4", pinpoints="(1x1),...,(6x6)"):
    from transformers import SiglipVisionConfig

    from vision import LlavaLLaDAConfig

    return LlavaLLaDAConfig(
        vision_config=SiglipVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=384, patch_size=14),
        image_aspect_ratio=aspect, image_grid_pinpoints=pinpoints, mm_patch_merge_type="spatial_unpad",
        d_model=8, n_heads=2, n_layers=1, mlp_hidden_size=16, vocab_size=64, embedding_size=64,
        mask_token_id=63, eos_token_id=62, pad_token_id=62,
    )


# (width, height) -> (grid across, grid down, unpadded h, w, final h, w, tokens), derived by hand:
#   best grid: max effective resolution min(int(w s) int(h s), w h), s = min(W / w, H / h), then least waste;
#   feature map (27 n_h) x (27 n_w); unpad: if w/h > W/H keep rows pad..H-pad with pad = (H - int(h W / w)) // 2,
#   else the same for columns; anyres_max_4: r = sqrt(h w / (4 * 27^2)), if r > 1.1 -> (int(h // r), int(w // r));
#   tokens = 729 + h' (w' + 1).
ANYRES_CASES = {
    # 1152x768 (3x2) wins (effective 500000, waste 384736); 54x81 map, int(500 * 81 / 1000) = 40 rows kept
    # (pad 7); r = sqrt(40 * 81 / 2916) = 1.054 -> no downscale; 729 + 40 * 82
    (1000, 500): (3, 2, 40, 81, 40, 81, 4009),
    # transposed: 768x1152 (2x3); 81x54 map, int(500 * 81 / 1000) = 40 columns kept; 729 + 81 * 41
    (500, 1000): (2, 3, 81, 40, 81, 40, 4050),
    # 384x1152 (1x3): 81x27, nothing to unpad; r = sqrt(81 * 27 / 2916) = 0.87; 729 + 81 * 28
    (300, 900): (1, 3, 81, 27, 81, 27, 2997),
    # 2304x2304 (6x6): 162x162, r = 162 / 54 = 3 -> 54x54; 729 + 54 * 55
    (2000, 2000): (6, 6, 162, 162, 54, 54, 3699),
    # small image: 384x384 (1x1) keeps it all (effective = area 2400, least waste); 27x27 map,
    # w/h = 1.5 > 1 -> int(40 * 27 / 60) = 18 rows, pad 4 -> rows 4..23 = 19; 729 + 19 * 28
    (60, 40): (1, 1, 19, 27, 19, 27, 1261),
}


@pytest.mark.parametrize("size", sorted(ANYRES_CASES))
def test_anyres_grid_arithmetic(size):
    from vision.image_processing import anyres_grid_shape
    from vision.merging import merge_image_features, num_image_tokens, unpadded_shape

    n_w, n_h, uh, uw, fh, fw, tokens = ANYRES_CASES[size]
    config = _anyres_config()
    assert anyres_grid_shape(size, config.image_grid_pinpoints, 384) == (n_w, n_h)
    top, bottom, left, right = unpadded_shape(27 * n_h, 27 * n_w, size)
    assert (bottom - top, right - left) == (uh, uw)
    assert num_image_tokens(size, config) == tokens
    features = torch.randn(1 + n_w * n_h, 27 * 27, 8)
    newline = torch.randn(8)
    rows = merge_image_features([features], [size], config, newline)[0]
    assert rows.shape == (tokens, 8)
    torch.testing.assert_close(rows[:729], features[0])  # the base crop first
    grid = rows[729:].reshape(fh, fw + 1, 8)
    assert torch.equal(grid[:, -1], newline.expand(fh, 8))  # one newline closing every row
    if (fh, fw) == (uh, uw):  # no downscale: the first kept row starts in tile (0, 0) at (top, left)
        torch.testing.assert_close(grid[0, : 27 - left], features[1, top * 27 + left: top * 27 + 27])


@pytest.mark.parametrize("size", [(1000, 500), (300, 900), (60, 40)])
def test_anyres_preprocessing_crops(size):
    from PIL import Image

    from vision import ImageProcessingConfig, process_image

    n_w, n_h = ANYRES_CASES[size][:2]
    image = Image.new("RGB", size, (200, 30, 30))
    pv, got = process_image(image, ImageProcessingConfig(aspect_ratio="anyres_max_4"))
    assert got == size and pv.shape == (1 + n_w * n_h, 3, 384, 384)
    red = (200 / 255 - 0.5) / 0.5
    assert abs(float(pv[0, 0].mean()) - red) < 1e-3  # crop 0: the whole image squashed


def test_anyres_end_to_end_on_fixture_tower(v_model, v_expected, monkeypatch):
    """A wide image through anyres_max with a small grid: rows spliced = the grid arithmetic."""
    from PIL import Image

    import vision

    monkeypatch.setattr(v_model.config, "image_aspect_ratio", "anyres_max_1")
    monkeypatch.setattr(v_model.config, "image_grid_pinpoints", [[384, 384], [768, 384]])
    image = Image.new("RGB", (800, 360), (10, 120, 240))
    pv, sizes = vision.process_images([image], vision.ImageProcessingConfig.from_model_config(v_model.config))
    assert pv[0].shape[0] == 3  # base + 2x1 grid
    expected = vision.num_image_tokens((800, 360), v_model.config)
    # by hand: 768x384 wins (effective 768 * 345 vs 384 * 172) -> 27x54 map; 800/360 > 2 -> int(360 * 54 / 800)
    # = 24 rows, pad 1 -> 25 rows; r = sqrt(25 * 54 / 729) = 1.36 > 1.1 -> (int(25 // 1.36), int(54 // 1.36))
    # = (18, 39); 729 + 18 * 40
    assert expected == 729 + 18 * 40
    with torch.no_grad():
        spliced = v_model.prepare_inputs_embeds(torch.tensor([[1, 2, -200, 3]]), pv, sizes)
    assert spliced.inputs_embeds.shape == (1, 3 + expected, v_model.config.d_model)
    assert spliced.image_spans == [[(2, 2 + expected)]]


# ----------------------------------------------------------------------------------------- batching
def test_left_padded_batch_splicing(v_model, v_expected):
    """Two prompts of different lengths, left-padded: each row holds exactly its own spliced sequence."""
    tensors, _ = v_expected
    pv = tensors["image.pixel_values"]
    a = tensors["forward.input_ids"]
    b = torch.cat([a[:10], a[47:]])  # a shorter prompt: the image after 10 tokens
    ids = torch.full((2, a.shape[0]), v_model.config.pad_token_id)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = a, 1
    ids[1, -b.shape[0]:], mask[1, -b.shape[0]:] = b, 1
    with torch.no_grad():
        batch = v_model.prepare_inputs_embeds(ids, [pv, pv], [(64, 40), (64, 40)], attention_mask=mask)
        single_a = v_model.prepare_inputs_embeds(a[None], [pv], [(64, 40)]).inputs_embeds[0]
        single_b = v_model.prepare_inputs_embeds(b[None], [pv], [(64, 40)]).inputs_embeds[0]
        pad_vec = v_model.embed_tokens(torch.tensor(v_model.config.pad_token_id))
    n_a, n_b = len(a) - 1 + 730, len(b) - 1 + 730
    assert batch.inputs_embeds.shape[:2] == (2, n_a) and single_b.shape[0] == n_b
    assert torch.equal(batch.inputs_embeds[0], single_a)
    assert torch.equal(batch.inputs_embeds[1, n_a - n_b:], single_b)
    assert torch.equal(batch.inputs_embeds[1, : n_a - n_b], pad_vec.expand(n_a - n_b, -1))
    assert batch.attention_mask[0].all() and batch.attention_mask[1].tolist() == [0] * (n_a - n_b) + [1] * n_b
    assert batch.image_spans == [[(47, 777)], [(n_a - n_b + 10, n_a - n_b + 740)]]
    image_token = v_model.config.image_token_index
    assert int((batch.token_ids == image_token).sum()) == 2 * 730


# ----------------------------------------------------------------------------------------- template
class _PieceTokenizer:
    """Greedy longest-match over the fixture's pieces (its prompts use stand-in ids for ordinary text)."""

    def __init__(self, pieces: list[dict], bos_id: int):
        self.table = {p["piece"]: p["ids"] for p in pieces}
        self.bos_token_id = bos_id

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            match = max((p for p in self.table if text.startswith(p, i)), key=len, default=None)
            if match is None:
                raise ValueError(f"no piece for {text[i:i + 20]!r}")
            ids.extend(self.table[match])
            i += len(match)
        return {"input_ids": ids}


def test_prompt_template_and_image_tokenisation(v_expected):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from vision.conversation import build_messages, render_prompt, tokenize_with_images

    tensors, meta = v_expected
    template = meta["template"]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                  bos_token="<|startoftext|>")
    text = render_prompt(tok, build_messages("Please describe the image in detail."))
    assert text == template["multimodal_prompt_text"]
    assert render_prompt(tok, build_messages("What is the capital of France? Answer in one word.", num_images=0)) == \
        template["text_only_prompt_text"]
    pieces = _PieceTokenizer(template["pieces"], meta["ids"]["bos"])
    # the official quirk: the "\n" (198) after <image> is dropped because the prompt starts with BOS
    assert tokenize_with_images(text, pieces) == tensors["generate.input_ids"].tolist()
    plain = tokenize_with_images(text, pieces, official_quirk=False)
    k = plain.index(-200)
    assert plain[k + 1] == 198 and plain[:k + 1] + plain[k + 2:] == tensors["generate.input_ids"].tolist()


# ----------------------------------------------------------------------------------------- save / reload
def test_save_and_reload_round_trip(v_model, v_expected, tmp_path):
    from transformers import AutoModel

    tensors, _ = v_expected
    v_model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["model_type"] == "llava_llada" and saved["vision_config"]["num_hidden_layers"] == 3
    reloaded = AutoModel.from_pretrained(str(tmp_path / "saved"), dtype=torch.float32).eval()
    for key, value in v_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    ids = tensors["text_only.input_ids"][None, :20]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, v_model(ids).logits)


# ----------------------------------------------------------------------------------------- small random model
@pytest.fixture(scope="module")
def small_model():
    """A random LLaDA-V with a 64-token vocabulary and a 28-pixel tower (2 x 2 features per crop)."""
    from transformers import SiglipVisionConfig

    from vision import LlavaLLaDAConfig, LlavaLLaDAModelLM

    config = LlavaLLaDAConfig(
        vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=28, patch_size=14),
        image_aspect_ratio="pad", d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=64, vocab_size=64,
        embedding_size=64, mask_token_id=63, eos_token_id=62, pad_token_id=62, max_sequence_length=256,
    )
    torch.manual_seed(0)
    return LlavaLLaDAModelLM(config).eval()


def test_several_images_in_one_prompt(small_model):
    from PIL import Image

    import vision

    images = [Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (20, 40), (0, 0, 255))]
    pv, sizes = vision.process_images(images, vision.ImageProcessingConfig.from_model_config(small_model.config))
    ids = torch.tensor([[1, -200, 2, 3, -200, 4]])
    with torch.no_grad():
        spliced = small_model.prepare_inputs_embeds(ids, pv, sizes)
        rows = small_model.image_rows(pv, sizes)
    assert [r.shape[0] for r in rows] == [5, 5]  # 2 x 2 features + one newline each ("pad")
    assert spliced.image_spans == [[(1, 6), (8, 13)]] and spliced.inputs_embeds.shape[1] == 4 + 10
    torch.testing.assert_close(spliced.inputs_embeds[0, 1:6], rows[0])
    torch.testing.assert_close(spliced.inputs_embeds[0, 8:13], rows[1])
    torch.testing.assert_close(spliced.inputs_embeds[0, 6], small_model.embed_tokens(torch.tensor(2)))
    out = vision.generate(small_model, ids[0], images, steps=4, gen_length=4, block_length=4, suppress_tokens=[62])
    assert out.shape == (1, 4) and not bool((out == 62).any())  # EOS suppressed at masked positions


def test_prompt_cache_is_exact_while_the_prompt_context_is_unchanged(small_model):
    """The cached prompt keys equal fresh ones when the answer region has not changed: same logits."""
    from sampling import TokenDenoiser

    from vision.generation import PromptCachingDenoiser

    ids = torch.tensor([[1, 2, -200, 3, 4]])
    pv = [torch.randn(1, 3, 28, 28)]
    embeds = small_model.prepare_inputs_embeds(ids, pv, [(28, 28)]).inputs_embeds
    P = embeds.shape[1]
    x = torch.cat([torch.full((1, P), 62), torch.full((1, 6), 63)], dim=1)
    plain = TokenDenoiser(small_model).with_prompt_embeds(embeds)
    cached = PromptCachingDenoiser(TokenDenoiser(small_model)).with_prompt_embeds(embeds)
    with torch.no_grad():
        first = cached(x).logits[:, P:]
        second = cached(x).logits[:, P:]  # served from the prompt cache: only the 6 answer positions run
        reference = plain(x).logits[:, P:]
    assert cached.cache is not None and cached.cache.length == P
    torch.testing.assert_close(first, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(second, reference, atol=1e-5, rtol=0)
    x2 = x.clone()
    x2[0, P] = 5  # the answer changes: the cached prompt keys are now stale (an approximation)
    with torch.no_grad():
        assert not torch.allclose(cached(x2).logits[:, P:], plain(x2).logits[:, P:], atol=1e-6)


def test_prompt_cache_carries_over_chat_turns(small_model):
    import vision

    ids = torch.tensor([1, 2, -200, 3, 4])
    pv = [torch.randn(1, 3, 28, 28)]
    kw = dict(steps=4, gen_length=4, block_length=4, suppress_tokens=[62])
    r1 = vision.generate(small_model, ids, pv, [(28, 28)], prompt_cache=True, return_dict=True, **kw)
    assert r1.prompt_cache.length == r1.prompt_length == 4 + 5
    ids2 = torch.cat([ids, r1.sequences[0], torch.tensor([7, 8, 9])])
    embeds2 = small_model.prepare_inputs_embeds(ids2[None], pv, [(28, 28)]).inputs_embeds
    assert r1.prompt_cache.usable_for(embeds2, None, rows=1) == r1.prompt_length  # the old prompt is a prefix
    assert r1.prompt_cache.usable_for(embeds2.flip(1), None, rows=1) == 0
    assert r1.prompt_cache.usable_for(embeds2, None, rows=2) == 0  # CFG doubles the rows: no reuse
    r2 = vision.generate(small_model, ids2, pv, [(28, 28)], prompt_cache=r1.prompt_cache, return_dict=True, **kw)
    assert r2.prompt_cache.length == r2.prompt_length == len(ids2) - 1 + 5 and r2.sequences.shape == (1, 4)


def test_open_clip_tower_option():
    import vision
    from vision import LlavaLLaDAConfig, LlavaLLaDAModelLM

    config = LlavaLLaDAConfig(
        vision_tower_type="open_clip", open_clip_model="ViT-S-32", open_clip_image_size=64, open_clip_patch_size=32,
        mm_hidden_size=384, image_aspect_ratio="pad", d_model=32, n_heads=4, n_layers=1, mlp_hidden_size=64,
        vocab_size=64, embedding_size=64, mask_token_id=63, eos_token_id=62, pad_token_id=62,
    )
    model = LlavaLLaDAModelLM(config).eval()
    cfg = vision.ImageProcessingConfig.from_model_config(config)
    assert cfg.image_size == 64 and cfg.image_mean != (0.5, 0.5, 0.5)  # CLIP normalisation
    pv, sizes = vision.process_images([LLADA_V_TINY / "image.png"], cfg)
    with torch.no_grad():
        features = model.model.vision_tower(pv[0])
        rows = model.image_rows(pv, sizes)[0]
    assert features.shape == (1, 4, 384) and rows.shape == (5, 32)  # 2 x 2 patches (no CLS) + newline
    with pytest.raises(ValueError, match="open_clip_patch_size=16 but ViT-S-32 has patches of 32"):
        LlavaLLaDAModelLM(LlavaLLaDAConfig(**{**config.to_dict(), "open_clip_patch_size": 16}))


def test_official_hub_config_resolves_its_tower_offline(monkeypatch):
    """GSAI-ML/LLaDA-V's config names its tower by Hub id and carries no tower config: the released
    tower's sizes are known, so the config resolves without the network."""
    import huggingface_hub

    from vision import LlavaLLaDAConfig

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    raw = json.loads((LLADA_V_TINY / "config.json").read_text())
    raw.update(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, num_hidden_layers=32,
               intermediate_size=12288, mm_hidden_size=1152, mm_vision_tower="google/siglip2-so400m-patch14-384",
               image_aspect_ratio="anyres_max_4", image_grid_pinpoints="(1x1),...,(6x6)")
    raw.pop("model_type")
    config = LlavaLLaDAConfig(**raw)
    vc = config.vision_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.patch_size, vc.image_size) == (1152, 27, 14, 384)
    assert config.tokens_per_side == 27 and config.anyres_max_crops == 4 and config.d_model == 4096
    raw["mm_vision_tower"] = "my-own-tower"
    with pytest.raises(ValueError, match="mm_vision_tower='my-own-tower'"):
        LlavaLLaDAConfig(**raw)
    raw["mm_vision_tower"], raw["image_aspect_ratio"] = "google/siglip-so400m-patch14-384", "anyres_max"
    with pytest.raises(ValueError, match="image_aspect_ratio='anyres_max'"):
        LlavaLLaDAConfig(**raw)
