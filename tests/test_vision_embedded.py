"""The embedded LLaDA-V: its synthetic corpus (vision.shapes), the build pipeline (vision.build_embedded), the
shipped model (llada/embedded/llada-mini-vision), its lm-eval task (llada_shapes) and the demo's vision engine."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vision.shapes import (
    COLOURS, DOMAIN_TOKENS, POSITIONS, QUESTION_TYPES, ShapesConfig, build_corpus, caption, check_answer,
    heldout_is_disjoint, question_types_for, render_scene, write_corpus, write_lm_eval_task,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = ShapesConfig(train_images=40, heldout_images=12, heldout_per_type=3, seed=11)


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ corpus
def test_corpus_is_seeded_and_byte_identical(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_corpus(a, SMALL)
    write_corpus(b, SMALL)
    write_corpus(c, ShapesConfig(**{**SMALL.__dict__, "seed": 12}))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    n_images = SMALL.train_images + SMALL.heldout_images
    assert len(list((a / "images").glob("*.png"))) == n_images
    stage1 = json.loads((a / "stage1.json").read_text())
    stage2 = json.loads((a / "stage2.json").read_text())
    heldout = json.loads((a / "heldout.json").read_text())
    assert len(stage1) == SMALL.train_images
    scenes = build_corpus(SMALL)["train_scenes"]
    assert len(stage2) == sum(len(question_types_for(s)) for s in scenes)
    assert sum(len(s.objects) == 1 for s in scenes) * len(QUESTION_TYPES) + sum(len(s.objects) > 1 for s in scenes) \
        == len(stage2)  # one-shape images: every type; several shapes: the count only
    assert sorted({r["type"] for r in heldout}) == sorted(QUESTION_TYPES)
    assert all(sum(r["type"] == t for r in heldout) == SMALL.heldout_per_type for t in QUESTION_TYPES)
    for row in stage1 + stage2 + heldout:  # LLaVA rows: one image, the placeholder first
        assert (a / row["image"]).is_file()
        human, gpt = row["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n") and gpt["from"] == "gpt"


def test_heldout_images_are_new():
    assert heldout_is_disjoint(SMALL) and heldout_is_disjoint(ShapesConfig())
    corpus = build_corpus(SMALL)
    train = {render_scene(s, SMALL.image_size).tobytes() for s in corpus["train_scenes"]}
    held = [render_scene(s, SMALL.image_size).tobytes() for s in corpus["heldout_scenes"]]
    assert not train & set(held)
    assert all(r["image"].startswith("images/heldout_") for r in corpus["heldout"])


def test_answers_are_the_truth_of_the_rendered_scene():
    """Ground truth from the pixels: each object's colour at its centre, in its grid cell; answers agree."""
    corpus = build_corpus(SMALL)
    cell = SMALL.image_size // 2
    for scene in corpus["train_scenes"] + corpus["heldout_scenes"]:
        img = render_scene(scene, SMALL.image_size)
        assert SMALL.min_objects <= len(scene.objects) <= SMALL.max_objects
        assert len({o.shape for o in scene.objects}) == len({o.colour for o in scene.objects}) == len(scene.objects)
        for o in scene.objects:
            assert img.getpixel((o.cx, o.cy)) == COLOURS[o.colour]
            (_, col, row), = [p for p in POSITIONS if p[0] == o.position]
            assert (o.cx // cell, o.cy // cell) == (col, row)
        assert caption(scene).count(" at the ") == len(scene.objects)
    scenes = {f"images/heldout_{i:05d}.png": s for i, s in enumerate(corpus["heldout_scenes"])}
    for row in corpus["heldout"]:
        scene, answer = scenes[row["image"]], row["answer"]
        if row["type"] == "count":
            assert answer == str(len(scene.objects))
        else:  # colour, shape and position are asked about images with one shape
            (obj,) = scene.objects
            assert answer == getattr(obj, row["type"]) and check_answer(row["type"], answer, answer)


def test_check_answer():
    assert check_answer("colour", "red", "red")
    assert check_answer("colour", "red", "It is Red.")
    assert not check_answer("colour", "red", "red or blue")
    assert not check_answer("colour", "red", "reddish")
    assert not check_answer("colour", "red", "")
    assert check_answer("shape", "circle", "A circle.")
    assert not check_answer("shape", "circle", "square")
    assert check_answer("count", "2", "2") and check_answer("count", "2", "Two shapes.")
    assert not check_answer("count", "2", "12") and not check_answer("count", "2", "twenty")
    assert check_answer("position", "top left", "at the top left")
    assert not check_answer("position", "top left", "top right")
    assert not check_answer("position", "top left", "top")
    with pytest.raises(ValueError, match="states 0 colour labels"):
        check_answer("colour", "Nothing.", "red")
    with pytest.raises(ValueError, match="unknown question type"):
        check_answer("size", "Big.", "big")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="max_objects"):
        ShapesConfig(max_objects=5)
    with pytest.raises(ValueError, match="image_size"):
        ShapesConfig(image_size=8)


def test_rows_tokenize_for_training():
    from transformers import AutoTokenizer

    from vision.data import tokenize_row
    from vision.merging import IGNORE_INDEX

    tok = AutoTokenizer.from_pretrained(str(ROOT / "llada" / "embedded" / "llada-mini-instruct"))
    row = build_corpus(SMALL)["stage2"][0]
    (example,) = tokenize_row(row, tok, image_folder="/data")
    assert example.input_ids.count(-200) == 1 and example.images == ["/data/" + row["image"]]
    response = [t for t, l in zip(example.input_ids, example.labels) if l != IGNORE_INDEX]
    assert tok.decode(response, skip_special_tokens=False) == row["conversations"][1]["value"] + "<|eot_id|>"


def test_every_answer_is_one_token_of_the_vision_tokenizer():
    """The stage 1 recipe adds DOMAIN_TOKENS to the text model's tokenizer; then every answer is one token."""
    from transformers import AutoTokenizer

    from vision.train import VisionTrainConfig

    recipe = VisionTrainConfig.from_yaml_and_overrides(str(ROOT / "configs/recipes/embedded_vision_stage1.yaml"))
    assert list(recipe.added_tokens) == list(DOMAIN_TOKENS)
    tok = AutoTokenizer.from_pretrained(recipe.language_model)
    tok.add_tokens(list(recipe.added_tokens))
    answers = {r["answer"] for r in build_corpus(SMALL)["heldout"]} | set(COLOURS) | set(DOMAIN_TOKENS)
    for answer in answers:
        assert len(tok(answer, add_special_tokens=False)["input_ids"]) == 1, answer


def test_added_tokens_take_spare_rows_or_grow_the_embedding():
    from safetensors.torch import load_file

    from vision.train import VisionTrainConfig, load_model_and_tokenizer

    lm_dir = ROOT / "llada" / "embedded" / "llada-mini-instruct"
    lm = load_file(str(lm_dir / "model.safetensors"))
    wte_key, head_key = "model.transformer.wte.weight", "model.transformer.ff_out.weight"
    rows = lm[wte_key].shape[0]
    tower = dict(image_size=16, patch_size=8, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                 num_attention_heads=2)

    def build(words):
        return load_model_and_tokenizer(VisionTrainConfig(stage=1, language_model=str(lm_dir), vision_config=tower,
                                                          image_aspect_ratio="pad", train_data=["x"],
                                                          added_tokens=words))

    model, tok = build(["circle", "top left"])  # fits the spare rows: same embedding, vocab_size grows by 2
    before = len(tok) - 2
    assert model.config.vocab_size == len(tok) and model.config.padded_vocab_size == rows
    assert tok.tokenize("top left") == ["top left"] and tok.convert_tokens_to_ids("circle") == before
    words = [f"word{i}" for i in range(rows - before + 5)]  # more than the spare rows: grows to a multiple of 64
    model, tok = build(words)
    state = model.state_dict()
    new_rows = model.config.padded_vocab_size
    assert new_rows >= len(tok) and new_rows % 64 == 0 and state["model.transformer.wte.weight"].shape[0] == new_rows
    for key in (wte_key, head_key):
        grown = state[key]
        assert torch.equal(grown[:rows], lm[key])
        assert torch.allclose(grown[rows:], lm[key].mean(0).expand(new_rows - rows, -1))
    with pytest.raises(ValueError, match="already tokens"):
        build(["red"])
    with pytest.raises(ValueError, match="only applies when a new LLaDA-V is built"):
        VisionTrainConfig(stage=2, model_name_or_path="x", train_data=["x"], added_tokens=["circle"])


def test_lm_eval_task_data_is_regenerated_identically(tmp_path):
    shipped = ROOT / "eval" / "tasks" / "data" / "shapes"
    write_lm_eval_task(tmp_path)
    assert _digest(tmp_path) == _digest(shipped)
    rows = [json.loads(line) for line in (shipped / "shapes.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and {r["type"] for r in rows} == set(QUESTION_TYPES)


def test_bundled_demo_examples():
    from PIL import Image

    from demo.vision_engine import bundled_examples

    examples = bundled_examples()
    assert len(examples) >= 3
    for path in examples:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (64, 64)


# ------------------------------------------------------------------------------------------ build pipeline
@pytest.fixture(scope="module")
def micro_build(tmp_path_factory):
    work = tmp_path_factory.mktemp("vision_build")
    proc = subprocess.run([sys.executable, "-m", "vision.build_embedded", "--micro", "--work", str(work)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, json.loads((work / "build_log.json").read_text())


def test_build_pipeline_micro(micro_build):
    work, log = micro_build
    for stage in (1, 2):
        entry = log[f"stage{stage}"]
        assert "-m vision.train" in entry["command"] and f"embedded_vision_stage{stage}.yaml" in entry["command"]
        summary = json.loads((Path(entry["output"]) / "training_summary.json").read_text())
        assert summary["stage"] == stage and summary["steps"] == log["config"][f"stage{stage}_steps"]
    ev = log["evaluation"]
    assert set(ev["per_type"]) == set(QUESTION_TYPES)
    assert all(v["total"] == 1 and 0 <= v["accuracy"] <= 1 for v in ev["per_type"].values())
    samples = json.loads((work / "heldout_samples.json").read_text())
    assert [check_answer(s["type"], s["expected"], s["answer"]) for s in samples] == [s["correct"] for s in samples]


def test_stage1_trains_only_the_connector(micro_build):
    from safetensors.torch import load_file

    work, _ = micro_build
    lm = load_file(str(ROOT / "llada" / "embedded" / "llada-mini-instruct" / "model.safetensors"))
    s1 = load_file(str(work / "stage1" / "final" / "model.safetensors"))
    s2 = load_file(str(work / "stage2" / "final" / "model.safetensors"))
    for key, value in lm.items():  # the language model's weights were copied in, unchanged by stage 1
        assert torch.equal(s1[key], value), key
    tower = [k for k in s1 if k.startswith("model.vision_tower.")]
    connector = [k for k in s1 if k.startswith("model.mm_projector.")]
    assert tower and connector
    assert any(not torch.equal(s1[k], s2[k]) for k in tower)  # stage 2 trains the (random) tower
    assert any(not torch.equal(s1[k], s2[k]) for k in lm)  # ... and the language model


def test_install_layout_and_image_processor(micro_build, tmp_path):
    """An installed model is a self-contained Hub folder: AutoModel (after `import vision`), AutoTokenizer and
    AutoImageProcessor load it, and the image processor gives the pixel values the model's own processing gives."""
    import vision
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from vision.build_embedded import install

    work, _ = micro_build
    dest = install(work / "stage2" / "final", tmp_path / "model", "# card\n")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
            "generation_config.json", "README.md"} <= {p.name for p in dest.iterdir()}
    model = AutoModel.from_pretrained(str(dest))
    assert type(model).__name__ == "LlavaLLaDAModelLM"
    tok = AutoTokenizer.from_pretrained(str(dest))
    assert tok.convert_tokens_to_ids("<|mdm_mask|>") == model.config.mask_token_id
    processor = AutoImageProcessor.from_pretrained(str(dest))
    image = next((work / "corpus" / "images").glob("heldout_*.png"))
    theirs = processor(images=vision.load_image(str(image)), return_tensors="pt")["pixel_values"]
    ours, sizes = vision.process_images([str(image)], vision.ImageProcessingConfig.from_model_config(model.config))
    assert torch.allclose(theirs, ours[0], atol=1e-6) and sizes == [(64, 64)]


# ------------------------------------------------------------------------------------------ the shipped model
EMBEDDED = ROOT / "llada" / "embedded" / "llada-mini-vision"


def test_shipped_model_is_the_vision_default_and_small():
    from llada.defaults import embedded_model_path, resolve_model

    assert embedded_model_path("vision") == EMBEDDED
    assert resolve_model(None, "vision") == str(EMBEDDED)
    size = sum(p.stat().st_size for p in EMBEDDED.iterdir())
    assert size < 8 * 2**20, f"{size} bytes"
    assert "Held-out accuracy" in (EMBEDDED / "README.md").read_text()


@pytest.fixture(scope="module")
def shipped():
    from vision.cli import load

    torch.set_num_threads(1)
    model, tok, _ = load(None, "cpu", "float32")
    return model, tok


def test_shipped_model_reproduces_its_model_card(shipped, tmp_path):
    """The measured claim of the model card, again: its held-out colour questions (the build's corpus, regenerated
    from the seed; the first 60 held-out rows, in the build's batches) give exactly the card's count."""
    import re

    from vision.build_embedded import BuildConfig, evaluate_heldout

    model, tok = shipped
    build = BuildConfig()
    config = ShapesConfig(train_images=build.train_images, heldout_images=build.heldout_images,
                          heldout_per_type=build.heldout_per_type, seed=build.seed)
    corpus = build_corpus(config)
    rows = corpus["heldout"][:60]
    (tmp_path / "images").mkdir()
    for row in rows:
        index = int(row["image"].split("_")[1].split(".")[0])
        render_scene(corpus["heldout_scenes"][index], config.image_size).save(tmp_path / row["image"])
    (tmp_path / "heldout.json").write_text(json.dumps(rows))
    result = evaluate_heldout(model, tok, tmp_path / "heldout.json", tmp_path, batch_size=build.eval_batch_size)
    card = (EMBEDDED / "README.md").read_text()
    correct, total = map(int, re.search(r"\| colour \| (\d+)/(\d+) \|", card).groups())
    assert total == sum(r["type"] == "colour" for r in rows) == 50
    assert result["per_type"]["colour"]["correct"] == correct
    assert correct >= 0.8 * total  # far above chance (1/6)


def test_lm_eval_simple_evaluate_on_images():
    """A real lm-eval run of the image task through the multimodal generate_until interface."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import eval.lm_eval_adapter  # noqa: F401  (registers llada and llada_v)
    from eval.__main__ import TASKS_DIR

    out = lm_eval.simple_evaluate(model="llada_v", model_args="device=cpu", tasks=["llada_shapes"], limit=8,
                                  batch_size=4, task_manager=TaskManager(include_path=str(TASKS_DIR),
                                                                         include_defaults=False),
                                  log_samples=True)
    row = out["results"]["llada_shapes"]
    samples = out["samples"]["llada_shapes"]
    assert len(samples) == 8
    scores = [s["acc"] for s in samples]
    assert row["acc,none"] == pytest.approx(sum(scores) / 8)
    for s in samples:  # the request carried the image, the context its placeholder; acc is check_answer's verdict
        ((context, gen_kwargs, aux),) = s["arguments"]
        assert context == "<image>\n" + s["doc"]["question"] and len(aux["visual"]) == 1
        assert gen_kwargs["gen_length"] == 16
        answer = s["filtered_resps"][0]
        assert s["acc"] == float(check_answer(s["doc"]["type"], s["doc"]["answer"], answer))
    assert row["acc,none"] >= 0.5  # far above chance (1/6 .. 1/3) on these held-out images


def test_lm_eval_adapter_image_placeholders(shipped):
    from eval.lm_eval_adapter import LLaDAVisionEvalModel

    lm = LLaDAVisionEvalModel(device="cpu")
    ids = lm.image_prompt_ids("What colour is the circle?", 1)  # no placeholder: put before the question, templated
    assert ids.count(-200) == 1 and ids[0] == lm.tokenizer.bos_token_id
    assert lm.image_prompt_ids("<image>\nWhat colour is the circle?", 1) == ids
    with pytest.raises(ValueError, match="1 <image> placeholder"):
        lm.image_prompt_ids("<image>\nWhat colour is the circle?", 2)
    with pytest.raises(ValueError, match="not LLaDA-V"):
        LLaDAVisionEvalModel(pretrained=str(ROOT / "llada" / "embedded" / "llada-mini-instruct"), device="cpu")


# ------------------------------------------------------------------------------------------ demo engine
@pytest.fixture(scope="module")
def engine():
    from demo.vision_engine import VisionEngine

    return VisionEngine(str(EMBEDDED), device="cpu")


def test_vision_engine_streams_every_step(engine):
    from demo.engine import DemoSettings
    from demo.vision_engine import bundled_examples

    settings = DemoSettings(gen_length=16, steps=16, block_length=16)
    out = list(engine.stream_reply(bundled_examples()[0], "How many shapes are there?", settings))
    html, final = out[-1]
    assert all(f is None for _, f in out[:-1]) and isinstance(final, str) and final
    assert 2 <= len(out) - 1 <= 1 + 16  # the empty view, then one view per denoising step (stopped early at EoT)
    assert "0 masked" in html
    assert out[0][0].count('class="mask"') == 16


def test_vision_engine_rejects_bad_files(engine, tmp_path):
    from PIL import Image

    from demo.engine import DemoSettings
    from vision.image_processing import ImageError

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    with pytest.raises(ImageError, match="corrupt.png"):
        list(engine.stream_reply(str(corrupt), "What colour is the circle?", DemoSettings()))
    tiff = tmp_path / "image.tiff"
    Image.new("RGB", (8, 8)).save(tiff)
    with pytest.raises(ImageError, match="TIFF images are not accepted"):
        engine.load_image(str(tiff))
    big = tmp_path / "big.png"
    big.write_bytes(b"0" * (engine.max_file_bytes + 1))
    with pytest.raises(ImageError, match="limit"):
        engine.load_image(str(big))
    with pytest.raises(ValueError, match="empty"):
        list(engine.stream_reply(str(ROOT / "demo" / "examples" / sorted(os.listdir(ROOT / "demo" / "examples"))[0]),
                                 "  ", DemoSettings()))
