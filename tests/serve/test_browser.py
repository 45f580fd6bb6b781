"""The web page in a real headless Chromium: browser -> HTTP -> embed -> FAISS -> render.

The expected first result of a text query is computed outside the server, with the same model
and plain numpy over the stored vectors; the page must show it first.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def expected_ranking(index: Path, text: str) -> list[int]:
    from clipforge.index.embedder import load_embedder

    with sqlite3.connect(index / "meta.sqlite") as conn:
        model = conn.execute("SELECT value FROM info WHERE key = 'model'").fetchone()[0]
        rows = conn.execute("SELECT id, vector FROM vectors").fetchall()
    query = load_embedder(model).texts([text])[0]
    scores = np.stack([np.frombuffer(v, dtype="<f4") for _, v in rows]) @ query
    return [rows[i][0] for i in np.argsort(-scores)]


@pytest.mark.slow
def test_search_page_text_upload_and_filters(live_server, index_copy: Path, collection: Path, tmp_path: Path, helpers) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is missing: apt-get install chromium")
    from playwright.sync_api import expect, sync_playwright

    from clipforge.index import add_images

    target = collection / "animals" / "cats" / "img004.png"
    dups = tmp_path / "dups"
    dups.mkdir()
    (dups / "copy-of-img004.jpg").write_bytes(helpers.perturbed_copy(target))
    add_images(index_copy, dups, workers=0)
    with sqlite3.connect(index_copy / "meta.sqlite") as conn:
        target_id = conn.execute("SELECT id FROM items WHERE path = ?", (str(target.resolve()),)).fetchone()[0]
        copy_id = conn.execute("SELECT id FROM items WHERE folder = ''").fetchone()[0]
    text = "a purple circle on a green background"
    ranking = expected_ranking(index_copy, text)
    server = live_server(index_copy)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        expect(page.locator("#info")).to_contain_text("37 images")

        # text query: the page shows, first, what the model ranks first
        page.fill("#query", text)
        page.click("#search-button")
        cards = page.locator("#results .card")
        expect(cards).to_have_count(24)
        assert [int(cards.nth(i).get_attribute("data-id")) for i in range(3)] == ranking[:3]
        expect(cards.first.locator(".badges .badge")).not_to_have_count(0)
        thumbs = page.locator("#results img.thumb")
        for _ in range(100):  # wait_for_function would need 'unsafe-eval', which the page's CSP forbids
            if thumbs.evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)"):
                break
            page.wait_for_timeout(100)
        assert thumbs.evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
        shot = Path(os.environ.get("CLIPFORGE_SCREENSHOT", tmp_path / "search.png"))
        page.screenshot(path=str(shot), full_page=True)

        # upload an image: it and its near duplicate come first
        page.fill("#query", "")
        page.set_input_files("#image-input", str(target))
        expect(page.locator("#image-chip")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("results in")
        assert {int(cards.nth(i).get_attribute("data-id")) for i in range(2)} == {target_id, copy_id}
        assert int(cards.first.get_attribute("data-id")) == target_id

        # "more like this" on the copy, then a folder filter applied exactly
        page.click("#clear-image")
        cards.nth(1).locator(".similar").click()
        expect(cards.first).to_have_attribute("data-id", str(copy_id))
        page.fill("#query", text)
        page.click("#filters summary")
        page.select_option("#folder", "plants")
        page.click("#search-button")
        expect(cards).to_have_count(12)
        folders = cards.locator(".folder").all_inner_texts()
        assert set(folders) == {"folder: plants"}

        # an error is shown as a sentence, not a crash
        page.set_input_files("#image-input", {"name": "bad.png", "mimeType": "image/png", "buffer": b"not an image"})
        expect(page.locator("#status")).to_contain_text("not a readable image")
        browser.close()
    assert not [e for e in errors if "422" not in e], errors
