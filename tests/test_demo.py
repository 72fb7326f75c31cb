"""The Gradio web demo in a real headless Chromium (Debian's, driven by Playwright): a typed question gets a
streamed answer, then a second turn. The screenshot is kept in outputs/test-artifacts/demo_chat.png."""
from __future__ import annotations

import os
import re
import shutil

import pytest

from conftest import ROOT, free_port

CHROMIUM = os.environ.get("MEDGPT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "outputs" / "test-artifacts"
SETTINGS = dict(temperature=0.0, repetition_penalty=3.0, max_new_tokens=24)

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM}: install it with "
                                                                    f"`apt-get install -y chromium` (see .ci/run)")


def _letters(text: str) -> str:
    """Compare what markdown rendering cannot change: letters and CJK characters."""
    return re.sub(r"[\W_]+", "", text)


BOT_TEXTS = """() => [...document.querySelectorAll("[data-testid='bot']")].map(e => e.innerText.trim())"""
# Records every text the last bot message shows, so a reply that grows piece by piece is seen as several states.
WATCH = """() => { window.__states = new Set();
  new MutationObserver(() => { const b = [...document.querySelectorAll("[data-testid='bot']")].pop();
    if (b && b.innerText.trim()) window.__states.add(b.innerText.trim()); })
  .observe(document.body, {subtree: true, childList: true, characterData: true}); }"""


def test_demo_chat_in_a_real_browser(sft_loaded):
    from gradio_client import Client
    from playwright.sync_api import sync_playwright

    from medgpt.inference.demo import build_demo
    from medgpt.modeling.generate import reply

    model, tokenizer, _ = sft_loaded
    demo = build_demo(model, tokenizer, system="你是医生", defaults=SETTINGS)
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    question, follow_up = "头痛发热怎么办？", "还有呢？"
    expected = reply(model, tokenizer, [{"role": "system", "content": "你是医生"},
                                        {"role": "user", "content": question}], **SETTINGS)
    assert _letters(expected)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(demo.local_url, wait_until="domcontentloaded")
            box = page.locator("textarea").first
            box.wait_for(timeout=60_000)
            page.evaluate(WATCH)
            for n, text in enumerate([question, follow_up], 1):
                box.fill(text)
                box.press("Enter")
                page.wait_for_function(f"() => ({BOT_TEXTS})().filter(t => t).length >= {n}", timeout=60_000)
                page.locator("[data-testid='stop-button']").first.wait_for(state="hidden", timeout=60_000)
            bots = page.evaluate(BOT_TEXTS)
            states = page.evaluate("() => [...window.__states]")
            users = page.locator("[data-testid='user']").all_inner_texts()
            page.screenshot(path=str(ARTIFACTS / "demo_chat.png"), full_page=True)
            browser.close()
        # the same endpoint a program would use: its partial outputs show the reply streams
        job = Client(demo.local_url, verbose=False).submit(question, "", 24, 0.0, 1.0, 3.0, api_name="/chat")
        final = job.result()
        partials = job.outputs()
    finally:
        demo.close()
    assert _letters(bots[0]) == _letters(expected)
    assert len(bots) == 2 and bots[1]
    assert [u.strip() for u in users] == [question, follow_up]
    assert len(states) > 2  # the browser showed growing replies, not only the finished ones
    assert len(partials) > 2 and partials[-1] == final and all(final.startswith(x) for x in partials)
    assert (ARTIFACTS / "demo_chat.png").stat().st_size > 10_000
