"""End to end: the real demo server, driven in headless Chromium (Debian's `chromium`) with Playwright."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llada.defaults import embedded_model_path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "tests" / "artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"demo server exited with {proc.returncode}:\n{proc.stdout.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"demo server did not listen on {port} within {timeout}s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (make test installs it)")
    args = []
    if not (embedded_model_path("instruct") / "config.json").is_file():
        # until the embedded model ships, a random-weight model with a tokenizer stands in
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import make_tiny_chat_checkpoint

        args += ["--model", str(make_tiny_chat_checkpoint(tmp_path_factory.mktemp("chat")))]
    with demo_server("--gen-length", "16", "--steps", "8", "--block-length", "8", *args) as url:
        yield url


@contextlib.contextmanager
def demo_server(*args: str):
    """The real demo server (`python -m demo.app`, one torch thread, on a free port) until the block ends."""
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "demo.app", "--port", str(port), "--threads", "1", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def _send_chat(page, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-send").click()


def test_chat_answer_rendered_with_denoising(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page()
    page.goto(server)
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    _send_chat(page, "What is 2 + 2?")
    page.wait_for_function(
        "() => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length > 0",
        timeout=120_000,
    )
    # the denoising view shows the revealed tokens and the step legend
    legend = page.locator("#denoising .legend").inner_text()
    assert "step" in legend and "0 masked" in legend
    assert page.locator("#denoising span.mask").count() == 0
    assert page.locator("#denoising span.new, #denoising span.old").count() == 16
    page.screenshot(path=str(ARTIFACTS / "demo_chat.png"), full_page=True)
    # a second turn keeps the history
    _send_chat(page, "And 3 + 3?")
    page.wait_for_function(
        "() => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length > 1",
        timeout=120_000,
    )
    assert page.locator("#chatbot [data-testid='user']").count() == 2
    assert "Error" not in page.locator("#chat-error").inner_text()
    page.close()


def test_two_sessions_both_answered(server, browser):
    pages = [browser.new_context().new_page() for _ in range(2)]
    for i, page in enumerate(pages):
        page.goto(server)
        page.wait_for_selector("#chat-input textarea", timeout=60_000)
    for i, page in enumerate(pages):
        _send_chat(page, f"question number {i}")
    for page in pages:
        page.wait_for_function(
            "() => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length > 0",
            timeout=120_000,
        )
        assert "Error" not in page.locator("#chat-error").inner_text()
        page.close()


def test_bad_settings_show_error_and_next_request_works(server, browser):
    page = browser.new_page()
    page.goto(server)
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    _send_chat(page, "   ")
    page.wait_for_function("() => document.querySelector('#chat-error').innerText.includes('Error')", timeout=60_000)
    assert "empty" in page.locator("#chat-error").inner_text()
    _send_chat(page, "hello")
    page.wait_for_function(
        "() => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length > 0",
        timeout=120_000,
    )
    page.close()
