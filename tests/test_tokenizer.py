"""The tokenizer against open_clip's SimpleTokenizer (OpenAI's reference algorithm) as oracle."""

from __future__ import annotations

import random

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from clipforge.errors import TokenizerError
from clipforge.tokenizer import EOT_TOKEN, SOT_TOKEN, Tokenizer, tokenize

_WORDS = ["cat", "dog", "photo", "a", "the", "of", "don't", "it's", "we're", "they'll", "I'd",
          "running", "ÜBER", "café", "naïve", "façade", "smörgåsbord", "東京", "日本語の文章", "北京",
          "한국어", "مرحبا", "שלום", "Привет", "Ελληνικά", "हिन्दी", "ไทย", "😀", "👍🏽", "👩‍👩‍👧",
          "🏳️‍🌈", "🇫🇷", "&amp;", "&lt;b&gt;", "&#39;", "&quot;hi&quot;", "&amp;amp;", "Ã©",
          "â€™", "Ã¼ber", "https://example.org/a?b=c&d=e", "#hashtag", "@user", "3.14159", "1,000",
          "2024-01-01", "C++", "e-mail", "---", "!!!", "...", "(x)", "[y]", "{z}", "\t", "\n",
          "  ", "\u00a0", "\u200b", "ﬁ", "Ｆｕｌｌｗｉｄｔｈ", "x²", "½", "№", "™", "\x1b[31mred",
          "ÄÖÜ", "ǅ", "İstanbul", "ß", "ſ", "Ω", "µ", "\u0301e", "e\u0301", "\r\n", "tab\tbed",
          "ALLCAPS", "MiXeD", "snake_case", "camelCase", "a/b\\c", "$100", "50%", "'quoted'"]  # fmt: skip


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = ["", " ", "a photo of a cat.", "A PHOTO OF A DOG!"]
    while len(texts) < n:
        kind = rng.random()
        if kind < 0.7:
            texts.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12))))
        elif kind < 0.85:  # random code points, including unassigned and surrogate-free ranges
            texts.append("".join(chr(rng.choice([rng.randint(32, 0x2FF), rng.randint(0x370, 0x9FFF),
                                                  rng.randint(0x1F300, 0x1FAFF)]))
                                 for _ in range(rng.randint(1, 20))))  # fmt: skip
        elif kind < 0.95:  # long texts that need truncation
            texts.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(40, 120))))
        else:
            texts.append("".join(rng.choice("ab &;<>#'\"\t\n") for _ in range(rng.randint(0, 15))))
    return texts


@pytest.fixture(scope="module")
def reference() -> SimpleTokenizer:
    return SimpleTokenizer()  # open_clip 3.x; clean="lower" is OpenAI's cleaning


def test_identical_ids_to_open_clip_on_10000_varied_strings(reference: SimpleTokenizer) -> None:
    corpus = _corpus(10_000)
    ours = tokenize(corpus, truncate=True)
    theirs = reference(corpus, context_length=77)  # open_clip always truncates, EOT last
    mismatches = [i for i in range(len(corpus)) if not torch.equal(ours[i], theirs[i])]
    assert mismatches == [], [corpus[i] for i in mismatches[:5]]
    assert sum(len(reference.encode(t)) + 2 > 77 for t in corpus) > 100  # truncation was tested


def test_encode_matches_reference_without_padding(reference: SimpleTokenizer) -> None:
    tok = Tokenizer()
    for text in _corpus(500, seed=1):
        assert tok.encode(text) == reference.encode(text)


def test_too_long_text_is_a_clear_error() -> None:
    with pytest.raises(TokenizerError, match=r"text 1 is \d+ tokens long.*truncate=True"):
        tokenize(["short", "word " * 100])


def test_truncation_keeps_end_of_text_last() -> None:
    ids = tokenize("word " * 100, truncate=True)
    assert ids.shape == (1, 77)
    assert ids[0, 0] == SOT_TOKEN and ids[0, -1] == EOT_TOKEN


def test_empty_string_and_other_context_lengths() -> None:
    ids = tokenize(["", "a photo of a cat"], context_length=16)
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert ids[0, :3].tolist() == [SOT_TOKEN, EOT_TOKEN, 0]
    assert tokenize([]).shape == (0, 77)


def test_decode_round_trip_on_plain_text() -> None:
    tok = Tokenizer()
    text = "a photo of a café in tokyo, 3 cats!"
    assert tok.decode(tokenize(text)[0].tolist()) == "a photo of a café in tokyo , 3 cats !"


def test_non_string_input_is_rejected() -> None:
    with pytest.raises(TokenizerError, match="text 0 is a int"):
        tokenize([3])  # type: ignore[list-item]
