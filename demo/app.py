"""The Gradio chat and vision demo: watch the answer appear out of the masks, step by step.

    llada demo                                   # embedded default models, http://127.0.0.1:7860
    llada demo --model GSAI-ML/LLaDA-8B-Instruct --device cuda --dtype bfloat16
    llada demo --vision-model GSAI-ML/LLaDA-V --device cuda --dtype bfloat16

Safe defaults: binds to 127.0.0.1, no public share link unless --share, a queue with a concurrency limit,
bounded prompt length and image size, and every error shown in the page instead of ending the server.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .engine import ChatEngine, DemoSettings
from .rendering import render_html, DenoisingView

log = logging.getLogger(__name__)

REMASKING_CHOICES = ["low_confidence", "random", "topk_margin", "entropy"]
CACHE_CHOICES = ["none", "prefix", "dual"]


def _settings_controls(gr, defaults: DemoSettings):
    lim = DemoSettings.LIMITS
    with gr.Accordion("Sampler settings", open=False):
        with gr.Row():
            gen_length = gr.Slider(*lim["gen_length"], value=defaults.gen_length, step=8, label="Generation length")
            steps = gr.Slider(*lim["steps"], value=defaults.steps, step=1, label="Steps")
            block_length = gr.Slider(*lim["block_length"], value=defaults.block_length, step=1, label="Block length")
        with gr.Row():
            temperature = gr.Slider(*lim["temperature"], value=defaults.temperature, step=0.05, label="Temperature")
            cfg_scale = gr.Slider(*lim["cfg_scale"], value=defaults.cfg_scale, step=0.1, label="CFG scale")
            remasking = gr.Dropdown(REMASKING_CHOICES, value=defaults.remasking, label="Remasking")
        with gr.Row():
            threshold = gr.Slider(*lim["threshold"], value=defaults.threshold, step=0.05,
                                  label="Parallel-decoding threshold (0 = off)")
            cache = gr.Radio(CACHE_CHOICES, value=defaults.cache, label="KV cache")
    return [gen_length, steps, block_length, temperature, cfg_scale, remasking, threshold, cache]


def _settings(values: Sequence[Any]) -> DemoSettings:
    names = ["gen_length", "steps", "block_length", "temperature", "cfg_scale", "remasking", "threshold", "cache"]
    return DemoSettings(**dict(zip(names, values)))


def build_app(chat: ChatEngine, vision: Optional[Any] = None, *, defaults: Optional[DemoSettings] = None,
              examples: Sequence[str] = ()):
    """The Blocks app. `vision` is a `demo.vision_engine.VisionEngine` or None (the tab then says how to add one)."""
    import gradio as gr

    defaults = defaults or DemoSettings()
    with gr.Blocks(title="LLaDA demo") as app:
        gr.Markdown(f"## LLaDA: masked diffusion chat\nModel: `{chat.name}`")
        with gr.Tab("Chat"):
            chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=320)
            denoise = gr.HTML(render_html(DenoisingView.empty(0)), label="Denoising", elem_id="denoising")
            error = gr.Markdown("", elem_id="chat-error")
            with gr.Row():
                message = gr.Textbox(placeholder="Ask something", show_label=False, scale=5, elem_id="chat-input",
                                     max_lines=6)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                clear = gr.Button("Clear", scale=1, elem_id="chat-clear")
            controls = _settings_controls(gr, defaults)

            def respond(text, history, *values):
                history = list(history or [])
                try:
                    settings = _settings(values)
                    messages = [{"role": m["role"], "content": _plain(m["content"])} for m in history]
                    messages.append({"role": "user", "content": text or ""})
                    shown = history + [{"role": "user", "content": text}]
                    for html, answer in chat.stream_reply(messages, settings):
                        if answer is None:
                            yield shown, html, "", gr.update()
                        else:
                            yield shown + [{"role": "assistant", "content": answer}], html, "", ""
                except ValueError as err:
                    yield history, gr.update(), f"**Error:** {err}", gr.update()
                except Exception as err:  # keep the server alive and say what happened
                    log.exception("chat request failed")
                    yield history, gr.update(), f"**Error:** {type(err).__name__}: {err}", gr.update()

            inputs = [message, chatbot, *controls]
            outputs = [chatbot, denoise, error, message]
            send.click(respond, inputs, outputs)
            message.submit(respond, inputs, outputs)
            clear.click(lambda: ([], render_html(DenoisingView.empty(0)), ""), None, [chatbot, denoise, error])

        with gr.Tab("Vision"):
            if vision is None:
                gr.Markdown("No vision model is loaded. Start the demo with `--vision-model PATH_OR_HUB_ID` "
                            "(a LLaDA-V checkpoint).", elem_id="vision-missing")
            else:
                _vision_tab(gr, vision, defaults, examples)
    return app


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Gradio may hand back [{"type": "text", "text": ...}]
        return "".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
    return str(content)


def _vision_tab(gr, vision, defaults: DemoSettings, examples: Sequence[str]) -> None:
    gr.Markdown(f"Model: `{vision.name}`")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image (PNG, JPEG, WebP, BMP, GIF)", file_types=["image"], elem_id="vision-upload")
            picked = gr.Dropdown([Path(e).name for e in examples], label="...or a bundled example",
                                 elem_id="vision-example", value=None, visible=bool(examples))
            preview = gr.Image(label="Image", interactive=False, elem_id="vision-preview", type="pil", height=224)
        with gr.Column(scale=2):
            question = gr.Textbox(placeholder="Ask about the image", show_label=False, elem_id="vision-input")
            ask = gr.Button("Ask", variant="primary", elem_id="vision-send")
            denoise = gr.HTML(render_html(DenoisingView.empty(0)), elem_id="vision-denoising")
            answer = gr.Markdown("", elem_id="vision-answer")
            error = gr.Markdown("", elem_id="vision-error")
    controls = _settings_controls(gr, defaults)
    by_name = {Path(e).name: e for e in examples}
    current = gr.State(None)  # the image the next question is about: the last upload or the last example picked

    def show(path):
        if path is None:
            return None, None, ""
        try:
            return path, vision.load_image(path), ""
        except ValueError as err:
            return None, None, f"**Error:** {err}"

    def uploaded(file):
        path = file if isinstance(file, str) or file is None else getattr(file, "name", None)
        return (*show(path), gr.update(value=None))

    def chose(name):
        return (*show(by_name.get(name) if name else None), gr.update(value=None))

    def respond(path, text, *values):
        try:
            if path is None:
                raise ValueError("upload an image or pick a bundled example first")
            settings = _settings(values)
            for html, final in vision.stream_reply(path, text or "", settings):
                yield html, (final if final is not None else gr.update()), ""
        except ValueError as err:
            yield gr.update(), "", f"**Error:** {err}"
        except Exception as err:
            log.exception("vision request failed")
            yield gr.update(), "", f"**Error:** {type(err).__name__}: {err}"

    # .upload / .input fire on the visitor's actions only, so clearing the other input does not cascade
    upload.upload(uploaded, [upload], [current, preview, error, picked])
    upload.clear(lambda: (None, None, ""), None, [current, preview, error])
    picked.input(chose, [picked], [current, preview, error, upload])
    inputs = [current, question, *controls]
    ask.click(respond, inputs, [denoise, answer, error])
    question.submit(respond, inputs, [denoise, answer, error])


def main(argv: Optional[Sequence[str]] = None) -> int:
    from llada.defaults import embedded_model_path, resolve_model

    ap = argparse.ArgumentParser(prog="llada demo", description=__doc__.strip().splitlines()[0])
    ap.add_argument("--model", default=None, help="text model: Hub id or folder (default: the embedded instruct model)")
    ap.add_argument("--vision-model", default=None, help="LLaDA-V model: Hub id or folder (default: the embedded one)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--quantize", default=None, choices=["8bit", "4bit"], help="bitsandbytes quantization of the text model")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")
    ap.add_argument("--concurrency", type=int, default=2, help="requests sampled at the same time")
    ap.add_argument("--queue-size", type=int, default=32, help="waiting requests beyond which new ones are refused")
    ap.add_argument("--max-prompt-chars", type=int, default=4000)
    ap.add_argument("--gen-length", type=int, default=DemoSettings.gen_length)
    ap.add_argument("--steps", type=int, default=DemoSettings.steps)
    ap.add_argument("--block-length", type=int, default=DemoSettings.block_length)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    chat = ChatEngine(resolve_model(args.model, "instruct"), device=args.device, dtype=args.dtype,
                      quantize=args.quantize, max_prompt_chars=args.max_prompt_chars)
    vision = None
    vision_path = args.vision_model or (str(embedded_model_path("vision")) if (embedded_model_path("vision") / "config.json").is_file() else None)
    examples: list[str] = []
    if vision_path:
        from .vision_engine import VisionEngine, bundled_examples

        vision = VisionEngine(vision_path, device=args.device, dtype=args.dtype)
        examples = bundled_examples()
    defaults = DemoSettings(gen_length=args.gen_length, steps=args.steps, block_length=args.block_length)
    app = build_app(chat, vision, defaults=defaults, examples=examples)
    app.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    app.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
               max_file_size="10mb", footer_links=[])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
