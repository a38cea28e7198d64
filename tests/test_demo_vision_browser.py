"""The demo's vision tab end to end: the real server on the embedded models (no model argument), driven in
headless Chromium (Debian's `chromium`) with Playwright: a bundled example answered, a corrupt upload shown as an
error with the next request still answered, and a vision and a chat session served at the same time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llada.defaults import embedded_model_path
from vision.shapes import answer_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_demo_browser import ARTIFACTS, CHROMIUM, _send_chat, browser, demo_server  # noqa: E402,F401

GEN = ["--gen-length", "16", "--steps", "16", "--block-length", "16"]


@pytest.fixture(scope="module")
def server():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (make test installs it)")
    for role in ("instruct", "vision"):
        if not (embedded_model_path(role) / "config.json").is_file():
            pytest.fail(f"the embedded {role} model is missing at {embedded_model_path(role)}")
    with demo_server(*GEN) as url:
        yield url


def _vision_page(browser, server):
    page = browser.new_context().new_page()
    page.goto(server)
    page.get_by_role("tab", name="Vision").click()
    page.wait_for_selector("#vision-input textarea", timeout=60_000)
    return page


def _pick_example(page, name_part: str) -> str:
    page.locator("#vision-example input").click()
    option = page.get_by_role("option").filter(has_text=name_part).first
    name = option.inner_text().strip()
    option.click()
    page.wait_for_selector("#vision-preview img", timeout=30_000)
    return name


def _ask(page, question: str) -> None:
    page.locator("#vision-input textarea").fill(question)
    page.locator("#vision-send").click()


ANSWER = "#vision-answer [data-testid=markdown]"  # the rendered text (not the status tracker's timer)


def _wait_answer(page, timeout: float = 60_000) -> str:
    page.wait_for_function(f"() => (document.querySelector('{ANSWER}')?.innerText || '').trim().length > 0",
                           timeout=timeout)
    return page.locator(ANSWER).inner_text().strip()


def test_bundled_example_answered_with_denoising(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = _vision_page(browser, server)
    _pick_example(page, "example_1_1-shape")
    _ask(page, "What colour is the shape?")
    answer = _wait_answer(page)
    # an answer of the asked kind, drawn out of the masks: the final view has no mask left
    labels = answer_labels("colour", answer)
    assert len(labels) == 1, answer
    legend = page.locator("#vision-denoising .legend").inner_text()
    assert "step" in legend and "0 masked" in legend
    assert page.locator("#vision-denoising span.mask").count() == 0
    assert page.locator("#vision-denoising span.new, #vision-denoising span.old").count() >= 2
    assert "Error" not in page.locator("#vision-error").inner_text()
    page.screenshot(path=str(ARTIFACTS / "demo_vision.png"), full_page=True)
    page.context.close()


def test_corrupt_upload_shows_error_and_next_request_works(server, browser, tmp_path):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    page = _vision_page(browser, server)
    page.locator("#vision-upload input[type=file]").set_input_files(str(corrupt))
    page.wait_for_function("() => document.querySelector('#vision-error').innerText.includes('Error')", timeout=30_000)
    message = page.locator("#vision-error").inner_text()
    assert "broken.png" in message and ("corrupt" in message or "not an image" in message)
    _ask(page, "What colour is the shape?")  # no usable image chosen: an error, not a crash
    page.wait_for_function("() => document.querySelector('#vision-error').innerText.includes('upload an image')",
                           timeout=30_000)
    _pick_example(page, "example_5_1-shape")
    _ask(page, "What colour is the shape?")
    answer = _wait_answer(page)
    assert len(answer_labels("colour", answer)) == 1, answer
    assert "Error" not in page.locator("#vision-error").inner_text()
    page.context.close()


def test_vision_and_chat_sessions_at_once(server, browser):
    vision_page = _vision_page(browser, server)
    chat_page = browser.new_context().new_page()
    chat_page.goto(server)
    chat_page.wait_for_selector("#chat-input textarea", timeout=60_000)
    _pick_example(vision_page, "example_4_3-shapes")
    _ask(vision_page, "How many shapes are there?")
    _send_chat(chat_page, "What is 2 + 2?")
    answer = _wait_answer(vision_page)
    assert len(answer_labels("count", answer)) == 1, answer
    chat_page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length > 0",
                                timeout=60_000)
    assert "Error" not in chat_page.locator("#chat-error").inner_text()
    vision_page.context.close()
    chat_page.context.close()
