"""Tokenizer throughput: clipforge vs open_clip's SimpleTokenizer, same texts, same run.

    python bench/tokenizer.py [--n 20000] [--out bench/results/tokenizer.json]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_time, print_table, write_results  # noqa: E402


def corpus(n: int) -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    rng = random.Random(0)
    classes = list(IMAGENET_CLASSNAMES)
    adjectives = ["small", "red", "old", "happy", "blurry", "bright", "wooden", "tiny", "large"]
    texts = []
    for i in range(n):
        c = rng.choice(classes)
        if i % 2:
            texts.append(f"a photo of a {c}.")
        else:
            texts.append(f"A {rng.choice(adjectives)} {c} next to a {rng.choice(classes)}, "
                         f"photographed in {rng.randint(1950, 2024)} — café & bar.")
    return texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from open_clip.tokenizer import SimpleTokenizer

    from clipforge.tokenizer import Tokenizer

    texts = corpus(args.n)
    rows = []
    for name, make in [("clipforge", Tokenizer), ("open_clip", SimpleTokenizer)]:
        cold = best_time(lambda: make()(texts), repeat=2)  # fresh caches each run
        tok = make()
        tok(texts)
        warm = best_time(lambda: tok(texts), repeat=3)
        rows.append({"tokenizer": name, "cold texts/s": args.n / cold, "warm texts/s": args.n / warm})
    for key in ("cold texts/s", "warm texts/s"):
        rows[0][f"{key.split()[0]} ratio"] = rows[0][key] / rows[1][key]
    print_table(f"Tokenizer throughput, {args.n} texts (cold includes building the tokenizer)", rows)
    print("results:", write_results("tokenizer", rows, args.out, n_texts=args.n))


if __name__ == "__main__":
    main()
