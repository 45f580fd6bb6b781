"""Tokenizer throughput: clipforge vs open_clip's SimpleTokenizer, same texts, same run.

    python bench/tokenizer.py [--n 20000] [--batch 256] [--repeat 3] [--out PATH]

Scenarios (texts/s, higher is better; each the best of ``--repeat`` runs, contenders alternate;
ratio = clipforge speed / open_clip speed):

* cold: a tokenizer built just before (not timed) sees the corpus for the first time;
* warm: the same tokenizer tokenizes the same corpus again (both have a word cache; clipforge
  also caches whole texts, which is what makes this row large);
* unseen: a warm tokenizer gets new texts with the same word distribution, so clipforge's
  whole-text cache never hits: the fair steady-state number for indexing many captions;
* unseen non-ASCII: only new texts that need ftfy (accents, emoji, CJK, HTML entities), where
  clipforge has no fast path and both spend most of their time in ftfy.
* build: seconds to construct a tokenizer (ratio: open_clip's time / clipforge's).

The corpus is half zero-shot prompts (OpenAI's 80 ImageNet templates x 1,000 classes) and half
generated captions, ~10% of them non-ASCII (accents, emoji, CJK, HTML entities) so the ftfy
path is exercised. Ids are checked equal before anything is timed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

_ADJECTIVES = ["small", "red", "old", "happy", "blurry", "bright", "wooden", "tiny", "large",
               "vintage", "close-up", "dark", "cropped", "black and white", "famous"]  # fmt: skip
_PLACES = ["on a table", "in the snow", "at the beach", "in a kitchen", "on the street",
           "in a forest", "next to a window", "under a bridge", "in Paris", "at night"]  # fmt: skip
_EXTRAS = ["café", "naïve", "façade", "Zürich", "東京", "😀", "👍🏽", "👩‍👩‍👧", "&amp;", "&quot;",
           "São Paulo", "smörgåsbord", "—", "“quoted”", "don’t"]  # fmt: skip


def corpus(n: int, seed: int = 0) -> list[str]:
    """Half "a photo of a {class}." style prompts, half captions; deterministic for a seed."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    rng = random.Random(seed)
    classes = list(IMAGENET_CLASSNAMES)
    texts = []
    for i in range(n):
        if i % 2:
            texts.append(rng.choice(OPENAI_IMAGENET_TEMPLATES)(rng.choice(classes)))
            continue
        caption = (
            f"A {rng.choice(_ADJECTIVES)} {rng.choice(classes)} {rng.choice(_PLACES)}, "
            f"photographed in {rng.randint(1950, 2024)}. I don't think it's a {rng.choice(classes)}!"
        )
        if rng.random() < 0.2:  # ~10% of all texts: non-ASCII or HTML entities (ftfy path)
            caption += f" {rng.choice(_EXTRAS)} {rng.choice(_EXTRAS)}"
        texts.append(caption)
    return texts


def _in_batches(tokenizer: Callable[..., Any], texts: list[str], batch: int) -> None:
    for start in range(0, len(texts), batch):
        tokenizer(texts[start : start + batch], context_length=77)


def _contenders() -> dict[str, Callable[[], Callable[..., Any]]]:
    from open_clip.tokenizer import SimpleTokenizer

    from clipforge.tokenizer import Tokenizer

    def clipforge() -> Callable[..., Any]:
        tok = Tokenizer()
        return lambda texts, context_length: tok(texts, context_length, truncate=True)

    return {"clipforge": clipforge, "open_clip": SimpleTokenizer}


def _check_parity(contenders: dict[str, Callable[[], Callable[..., Any]]], texts: list[str]) -> None:
    import torch

    ours, theirs = (make()(texts, context_length=77) for make in contenders.values())
    if not torch.equal(ours, theirs):
        raise SystemExit("clipforge and open_clip disagree on the benchmark corpus")


def _time(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(n: int, batch: int, repeat: int) -> list[dict[str, Any]]:
    texts, unseen = corpus(n, seed=0), corpus(n, seed=1)
    # The ~10% that must go through ftfy (not plain ASCII): no fast path helps these.
    non_ascii = [t for t in corpus(n, seed=2) if not t.isascii() or "&" in t]
    contenders = _contenders()
    _check_parity(contenders, texts + non_ascii)
    sizes = {"cold": n, "warm": n, "unseen": n, "unseen non-ASCII": len(non_ascii)}
    best: dict[str, dict[str, float]] = {name: {} for name in contenders}
    for r in range(repeat):
        names = list(contenders) if r % 2 == 0 else list(contenders)[::-1]  # alternate order
        for name in names:
            build_s = _time(lambda: contenders[name]())
            tok = contenders[name]()
            times = {
                "build": build_s,
                "cold": _time(lambda: _in_batches(tok, texts, batch)),
                "warm": _time(lambda: _in_batches(tok, texts, batch)),
                "unseen": _time(lambda: _in_batches(tok, unseen, batch)),
                "unseen non-ASCII": _time(lambda: _in_batches(tok, non_ascii, batch)),
            }
            for key, value in times.items():
                best[name][key] = min(best[name].get(key, float("inf")), value)
    ours, theirs = best["clipforge"], best["open_clip"]
    speedup = {key: theirs[key] / ours[key] for key in ours}  # same work: time ratio = speed ratio
    rows: list[dict[str, Any]] = [{
        "scenario": "build (s)", "texts": "-", "clipforge": round(ours["build"], 4),
        "open_clip": round(theirs["build"], 4), "ratio": round(speedup["build"], 2),
    }]  # fmt: skip
    for key, size in sizes.items():
        rows.append({
            "scenario": f"{key} (texts/s)", "texts": size, "clipforge": round(size / ours[key]),
            "open_clip": round(size / theirs[key]), "ratio": round(speedup[key], 2),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="texts per scenario")
    parser.add_argument("--batch", type=int, default=256, help="texts per tokenizer call")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; best is kept")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/tokenizer.json)")
    args = parser.parse_args()

    rows = measure(args.n, args.batch, args.repeat)
    title = f"Tokenizer throughput, {args.n} texts, batches of {args.batch}, best of {args.repeat}"
    print_table(title, rows)
    path = write_results(
        "tokenizer", rows, args.out, n_texts=args.n, batch=args.batch, repeat=args.repeat,
        corpus="half OpenAI ImageNet prompts, half captions (~10% non-ASCII/HTML); ids checked equal",
    )  # fmt: skip
    print("results:", path)


if __name__ == "__main__":
    main()
