"""LLaDA-V training: the SFT loss on embeddings, LLaVA data, stage 1 / stage 2 through `vision.train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import make_tiny_chat_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY_TOWER = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  image_size=28, patch_size=14)  # 2 x 2 features per crop


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("llada_v_train")
    make_tiny_chat_checkpoint(root / "lm", d_model=32)
    (root / "img").mkdir()
    rows = []
    for i, (name, rgb, size) in enumerate([("red", (220, 20, 20), (40, 30)), ("blue", (20, 20, 220), (30, 45)),
                                           ("green", (20, 200, 20), (28, 28))]):
        Image.new("RGB", size, rgb).save(root / "img" / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is it?"}, {"from": "gpt", "value": name}]})
    (root / "data.json").write_text(json.dumps(rows))
    return root


def _config(workdir, **changes):
    from vision.train import VisionTrainConfig

    values = dict(stage=1, language_model=str(workdir / "lm"), vision_config=TINY_TOWER, image_aspect_ratio="pad",
                  train_data=[str(workdir / "data.json")], image_folder=str(workdir / "img"), max_steps=2,
                  micro_batch_size=2, lr=1e-2, output_dir=str(workdir / "run"), logging_steps=1, num_threads=1)
    values.update(changes)
    return VisionTrainConfig(**values)


# ----------------------------------------------------------------------------------------- loss
class _RecordingLM(torch.nn.Module):
    """A stand-in language model: fixed logits per position, records the embeddings it is given."""

    def __init__(self, vocab=11, width=4, length=7, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embedding = torch.nn.Embedding(vocab, width)
        self.fixed_logits = torch.randn(2, length, vocab, generator=g)
        self.config = type("C", (), {"mask_token_id": vocab - 1})()
        self.seen = None

    def get_input_embeddings(self):
        return self.embedding

    def forward(self, inputs_embeds=None, attention_mask=None):
        self.seen = inputs_embeds.detach().clone()
        return type("O", (), {"logits": self.fixed_logits})()


def test_sft_loss_on_embeddings_by_hand():
    """L = 1/B sum_b 1/|r_b| sum_i m_i CE_i / p_b, masking only response positions, on embeddings."""
    from llada.losses import add_noise
    from vision.losses import llada_v_sft_objective

    lm = _RecordingLM()
    embeds = torch.randn(2, 7, 4)
    labels = torch.tensor([[-100, -100, -100, 3, 4, 5, 2], [-100, -100, 6, 7, -100, 8, 8]])  # -100: prompt / image
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12)]  # noqa: E731
    out = llada_v_sft_objective(lm, embeds, labels, generator=gens())
    # the same draws, replayed: which positions were masked and with what p
    noise = add_noise(labels.clamp(min=0), lm.config.mask_token_id, maskable=labels != -100, generator=gens())
    mask_vec = lm.embedding.weight[lm.config.mask_token_id]
    expected_loss = 0.0
    for b in range(2):
        response = [i for i in range(7) if labels[b, i] != -100]
        total = 0.0
        for i in range(7):
            if noise.is_masked[b, i]:
                assert i in response  # only response positions are ever masked
                assert torch.equal(lm.seen[b, i], mask_vec)
                logp = torch.log_softmax(lm.fixed_logits[b, i], -1)[labels[b, i]]
                total += float(-logp) / float(noise.p_mask[b])
            else:
                assert torch.equal(lm.seen[b, i], embeds[b, i])  # prompt / image rows / unmasked kept
        expected_loss += total / len(response)
    assert abs(float(out.loss) - expected_loss / 2) < 1e-4
    assert out.num_tokens == int((labels != -100).sum()) and out.num_masked == int(noise.is_masked.sum())


def test_sft_loss_refuses_rows_without_response():
    from vision.losses import llada_v_sft_objective

    with pytest.raises(ValueError, match=r"row\(s\) \[1\] have no response"):
        llada_v_sft_objective(_RecordingLM(), torch.randn(2, 7, 4), torch.tensor([[1] * 7, [-100] * 7]))


# ----------------------------------------------------------------------------------------- data
def test_llava_rows_to_examples(workdir):
    from transformers import AutoTokenizer

    from vision.data import VisionDataError, tokenize_row

    tok = AutoTokenizer.from_pretrained(workdir / "lm")
    row = {"image": "a.png", "conversations": [
        {"from": "human", "value": "what is it?"}, {"from": "gpt", "value": "a cat"},
        {"from": "human", "value": "and the colour?"}, {"from": "gpt", "value": "red"}]}
    examples = tokenize_row(row, tok, image_folder="/imgs")
    assert len(examples) == 2  # one per assistant turn, the dialogue so far as prompt
    for ex in examples:
        assert ex.input_ids.count(-200) == 1 and ex.images == ["/imgs/a.png"]  # placeholder added to turn 1
        assert len(ex.labels) == len(ex.input_ids)
        first = next(i for i, t in enumerate(ex.labels) if t != -100)
        assert all(t == -100 for t in ex.labels[:first]) and ex.labels[first:] == ex.input_ids[first:]
        assert tok.decode(ex.labels[first:]).endswith("<|eot_id|>")
    assert tok.decode(examples[0].labels[next(i for i, t in enumerate(examples[0].labels) if t != -100):]) == "a cat<|eot_id|>"
    assert len(examples[1].input_ids) > len(examples[0].input_ids)
    with pytest.raises(VisionDataError, match="row 7: 2 <image> placeholder"):
        tokenize_row({"image": "a.png", "conversations": [{"from": "human", "value": "<image><image>hi"},
                                                          {"from": "gpt", "value": "x"}]}, tok, where="row 7")
    with pytest.raises(VisionDataError, match="no assistant turn"):
        tokenize_row({"conversations": [{"from": "human", "value": "hi"}]}, tok)
    with pytest.raises(VisionDataError, match="role 'bot'"):
        tokenize_row({"conversations": [{"from": "bot", "value": "hi"}]}, tok)


def test_recipes_parse():
    from vision.train import VisionTrainConfig

    s1 = VisionTrainConfig.from_yaml_and_overrides(str(ROOT / "configs/recipes/llada_v_stage1.yaml"), ["train_data=[a.json]"])
    s2 = VisionTrainConfig.from_yaml_and_overrides(str(ROOT / "configs/recipes/llada_v_stage2.yaml"), ["train_data=[a.json]"])
    assert (s1.stage, s1.lr, s1.mm_projector_type, s1.image_aspect_ratio) == (1, 1e-3, "mlp2x_gelu", "anyres_max_4")
    assert (s2.stage, s2.lr, s2.vision_tower_lr) == (2, 1e-5, 2e-6)
    with pytest.raises(ValueError, match="train_data is empty"):
        VisionTrainConfig.from_yaml_and_overrides(str(ROOT / "configs/recipes/llada_v_stage1.yaml"))
    with pytest.raises(ValueError, match="unknown VisionTrainConfig field"):
        VisionTrainConfig.from_yaml_and_overrides(None, ["train_data=[a]", "language_model=x", "vision_config={}", "lr_rate=1"])


# ----------------------------------------------------------------------------------------- stages
def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_stage1_trains_only_the_connector_then_stage2_everything(workdir):
    import vision  # noqa: F401
    from transformers import AutoModel

    from vision.train import build_llada_v, set_trainable, train

    cfg1 = _config(workdir, output_dir=str(workdir / "s1"))
    torch.manual_seed(cfg1.seed)
    before = _params(build_llada_v(cfg1))
    final1 = train(cfg1)
    summary = json.loads((final1 / "training_summary.json").read_text())
    assert summary["steps"] == 2 and all(map(lambda x: x == x, summary["loss_history"]))  # finite
    model1 = AutoModel.from_pretrained(str(final1), dtype=torch.float32)
    saved_cfg = json.loads((final1 / "config.json").read_text())
    assert saved_cfg["model_type"] == "llava_llada" and saved_cfg["vision_config"]["hidden_size"] == 16
    after = _params(model1)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.mm_projector.", "model.image_newline")) for k in changed)
    assert any(k.startswith("model.mm_projector.") for k in changed)

    cfg2 = _config(workdir, stage=2, language_model=None, vision_config=None, model_name_or_path=str(final1),
                   lr=1e-2, vision_tower_lr=1e-3, output_dir=str(workdir / "s2"), max_steps=1)
    groups = {g["name"]: g["lr"] for g in set_trainable(AutoModel.from_pretrained(str(final1)), cfg2)}
    assert groups == {"vision_tower": 1e-3, "connector": 1e-2, "language_model": 1e-2}
    final2 = train(cfg2)
    after2 = _params(AutoModel.from_pretrained(str(final2), dtype=torch.float32))
    changed2 = {k for k in after if not torch.equal(after[k], after2[k])}
    assert any(k.startswith("model.vision_tower.") for k in changed2)
    assert any(k.startswith("model.transformer.blocks.") for k in changed2)


def test_build_refuses_mismatched_inputs(workdir):
    from vision.train import VisionTrainConfig

    with pytest.raises(ValueError, match="exactly one of model_name_or_path"):
        VisionTrainConfig(train_data=["a.json"])
    with pytest.raises(ValueError, match="exactly one of vision_tower"):
        VisionTrainConfig(train_data=["a.json"], language_model="lm")
    with pytest.raises(ValueError, match="stage=3"):
        VisionTrainConfig(train_data=["a.json"], model_name_or_path="m", stage=3)


@pytest.mark.slow
def test_accelerate_launch_two_processes_stage2(workdir, tmp_path):
    """The real command, data-parallel over 2 CPU processes: accelerate launch -m vision.train RECIPE key=value ...
    (stage 2 trains the tower too: its unused post-layernorm must stay frozen for DDP)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"stage: 2\nlanguage_model: {workdir / 'lm'}\nimage_aspect_ratio: pad\nmax_steps: 1\n"
                      f"micro_batch_size: 1\nnum_threads: 1\nlr: 1e-3\nvision_tower_lr: 2e-4\n")  # YAML strings
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
           "-m", "vision.train", str(recipe), f"train_data=[{workdir / 'data.json'}]", f"image_folder={workdir / 'img'}",
           f"output_dir={tmp_path / 'out'}", "vision_config.hidden_size=16", "vision_config.intermediate_size=32",
           "vision_config.num_hidden_layers=2", "vision_config.num_attention_heads=2", "vision_config.image_size=28",
           "vision_config.patch_size=14"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "out" / "final" / "training_summary.json").read_text())
    assert summary["steps"] == 1 and summary["processes"] == 2


# ----------------------------------------------------------------------------------------- command line
def test_vision_cli_answers_and_reports_bad_images(workdir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from vision.cli import generate_main
    from vision.train import build_llada_v

    folder = tmp_path / "llada-v"
    torch.manual_seed(0)
    build_llada_v(_config(workdir)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(workdir / "lm").save_pretrained(folder)
    args = ["--model", str(folder), "--image", str(workdir / "img" / "0.png"), "--prompt", "what colour is it?",
            "--steps", "4", "--gen-length", "4", "--block-length", "4", "--prompt-cache", "--show-nfe"]
    assert generate_main(args) == 0
    out, err = capsys.readouterr()
    assert "nfe" in err and "prompt" in err and out.endswith("\n")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert generate_main(args[:2] + ["--image", str(tmp_path / "bad.png")] + args[4:]) == 2
    assert "bad.png: not an image file" in capsys.readouterr().err
    # `llada generate --image ...` is the same command
    from sampling.cli import generate_main as llada_generate

    assert llada_generate(args) == 0
    assert "nfe" in capsys.readouterr().err
