"""The tokenizer against open_clip's SimpleTokenizer (a copy of OpenAI's simple_tokenizer.py).

open_clip 3.x's default cleaning (``clean="lower"``) is OpenAI's; the one difference from OpenAI
is the spelling of the special tokens (``<start_of_text>`` instead of ``<|startoftext|>``) when
they are written inside the text. The big parity corpus therefore holds neither spelling, and
``test_special_tokens_in_text_follow_openai`` checks them against open_clip set up as OpenAI.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading

import open_clip
import pytest
import regex
import torch
from open_clip.tokenizer import SimpleTokenizer, _clean_lower

import clipforge.tokenizer as tokmod
from clipforge.errors import TokenizerError
from clipforge.tokenizer import EOT_TOKEN, SOT_TOKEN, Tokenizer, get_tokenizer, tokenize

# --- a varied corpus, deterministic for a seed -------------------------------------------------
_ATOMS: dict[str, list[str]] = {
    "ascii": ["cat", "dog", "photo", "a", "the", "of", "running", "Photo", "ALLCAPS", "MiXeD",
              "snake_case", "camelCase", "e-mail", "x", "I", "zebra", "rendering", "supercalifragilistic"],
    "contraction": ["don't", "it's", "we're", "they'll", "I'd", "I'm", "you've", "DON'T", "can’t",
                    "rock'n'roll", "'s", "o'clock", "ma'am", "'tis"],
    "accent": ["café", "naïve", "façade", "Zürich", "smörgåsbord", "ÜBER", "ÄÖÜ", "e\u0301", "\u0301e",
               "ñandú", "øre", "łódź", "İstanbul", "ß", "ſ", "ǅ", "Ω", "µ", "ﬁne", "Ｆｕｌｌ", "x²", "½"],
    "script": ["東京", "日本語の文章", "北京", "ｶﾀｶﾅ", "한국어", "مرحبا", "السلام عليكم", "שלום",
               "Привет", "Ελληνικά", "हिन्दी", "ไทย", "ქართული", "Հայերեն", "𠜎𠜱"],
    "emoji": ["😀", "👍🏽", "👋🏿", "👩‍👩‍👧", "👨🏾‍💻", "🏳️‍🌈", "🇫🇷", "🇯🇵", "❤️", "1️⃣", "🧑‍🤝‍🧑",
              "🐈‍⬛", "👁️‍🗨️", "🤷🏻‍♀️", "©", "™", "☃", "✔︎"],
    "html": ["&amp;", "&lt;b&gt;", "&#39;", "&#x27;", "&#8217;", "&quot;hi&quot;", "&amp;amp;",
             "&amp;lt;", "&nbsp;", "&eacute;", "&hellip;", "&mdash;", "&copy;", "&#28;", "&#0;",
             "&#xD800;", "&amp", "& ", "&#;", "&notanentity;", "AT&T", "R&amp;D"],
    "mojibake": ["Ã©", "â€™", "Ã¼ber", "â€œquotedâ€\x9d", "Ã\xa0 la", "ÃƒÂ©", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚",
                 "æ—¥æœ¬", "Ã¢â‚¬â„¢"],
    "number": ["3.14159", "1,000", "2024-01-01", "42", "007", "1e10", "+49 30 1234567", "٣", "൬",
               "Ⅻ", "①", "$100", "50%", "12:30pm", "0x1F"],
    "punct": ["!!!", "...", "---", "(x)", "[y]", "{z}", "?!", "<>", "|", "\\", "/", "#", "@", "~~",
              "“", "”", "‘", "’", "«", "»", "—", "–", "…", "·", "•", "¿", "¡", "'", "''", '"', "!$"],
    "web": ["https://example.org/a?b=c&d=e", "http://x.y/z_(w)", "www.site.com", "user@mail.com",
            "#hashtag", "@user", "C:\\path\\file.txt", "/usr/bin/env", "<b>bold</b>", "a<br/>b"],
    "control": ["\x00", "\x1b[31mred\x1b[0m", "\x7f", "\x1c", "\x1f", "\x0b", "\x0c", "\x85", "\u2028",
                "\u200b", "\ufeff", "\u200d", "\ud83d", "\udc00", "\ud83d\ude00", "\x9d"],
    "space": [" ", "  ", "\t", "\n", "\r\n", "   \t \n ", "\u00a0", "\u3000", "\u2003", "\u205f"],
}  # fmt: skip
_KINDS = list(_ATOMS)
_SPECIAL_SPELLINGS = ("<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>")


def _random_codepoints(rng: random.Random) -> str:
    ranges = [(0x20, 0x7E), (0xA0, 0x2FF), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF),
              (0x900, 0xDFF), (0x1100, 0x11FF), (0x2000, 0x2BFF), (0x3000, 0x30FF), (0x4E00, 0x9FFF),
              (0xAC00, 0xD7A3), (0xD800, 0xDFFF), (0xE000, 0xE0FF), (0xFB00, 0xFFFF),
              (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF), (0xE0000, 0xE007F)]  # fmt: skip
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 12)))


def _mojibake(rng: random.Random) -> str:
    word = rng.choice(_ATOMS["accent"] + _ATOMS["script"] + _ATOMS["emoji"] + ["don’t", "—"])
    wrong = rng.choice(["cp1252", "latin-1", "cp437", "mac_roman"])
    return word.encode("utf-8").decode(wrong, errors="replace")


def _text(rng: random.Random, n_atoms: int) -> str:
    parts = []
    for _ in range(n_atoms):
        r = rng.random()
        if r < 0.08:
            parts.append(_random_codepoints(rng))
        elif r < 0.12:
            parts.append(_mojibake(rng))
        else:
            parts.append(rng.choice(_ATOMS[rng.choice(_KINDS)]))
        parts.append(rng.choice([" "] * 8 + ["", "  ", "\t", "\n", "\u00a0"]))
    return "".join(parts)


def _corpus(n: int, seed: int = 0) -> list[str]:
    """Mostly short texts, ~10% needing truncation, a few thousands of characters long."""
    rng = random.Random(seed)
    texts = ["", " ", "\n\t ", "a photo of a cat.", "A PHOTO OF A DOG!"]
    while len(texts) < n:
        r = rng.random()
        if r < 0.02:
            texts.append("")
        elif r < 0.88:
            texts.append(_text(rng, rng.randint(1, 15)))
        elif r < 0.995:
            texts.append(_text(rng, rng.randint(40, 150)))
        else:
            texts.append(_text(rng, rng.randint(800, 2000)))
    return texts


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference() -> SimpleTokenizer:
    return SimpleTokenizer()  # open_clip 3.x defaults: clean="lower", OpenAI's cleaning


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus(10_000)


@pytest.fixture(scope="module")
def reference_ids(reference: SimpleTokenizer, corpus: list[str]) -> list[list[int]]:
    return [reference.encode(text) for text in corpus]


# --- parity with the reference -----------------------------------------------------------------
def test_corpus_is_varied(corpus: list[str], reference_ids: list[list[int]]) -> None:
    assert len(corpus) >= 10_000
    assert sum(t == "" for t in corpus) > 100
    assert sum(len(ids) + 2 > 77 for ids in reference_ids) > 1000  # truncation and errors
    assert max(map(len, corpus)) > 5000
    assert sum(not t.isascii() for t in corpus) > 5000
    for atoms in _ATOMS.values():  # every category shows up
        assert any(atom in text for atom in atoms[:3] for text in corpus[:3000])
    cleaned = [tokmod._clean(t) for t in corpus]
    assert not any(s in c for c in cleaned for s in _SPECIAL_SPELLINGS)  # see the module doc


def test_identical_padded_tensors_to_open_clip(corpus: list[str]) -> None:
    ours = tokenize(corpus, truncate=True)  # (10000, 77)
    theirs = open_clip.tokenize(corpus)  # open_clip always truncates with EOT last, as OpenAI's
    assert ours.shape == theirs.shape == (len(corpus), 77) and ours.dtype == torch.long
    mismatches = (ours != theirs).any(dim=1).nonzero().flatten().tolist()
    assert mismatches == [], [corpus[i] for i in mismatches[:5]]


def test_identical_ids_without_padding(corpus: list[str], reference_ids: list[list[int]]) -> None:
    tok = Tokenizer()
    mismatches = [i for i, text in enumerate(corpus) if tok.encode(text) != reference_ids[i]]
    assert mismatches == [], [corpus[i] for i in mismatches[:5]]


def test_too_long_texts_raise_without_truncate(
    corpus: list[str], reference_ids: list[list[int]]
) -> None:
    fits = [i for i, ids in enumerate(reference_ids) if len(ids) + 2 <= 77]
    too_long = [i for i, ids in enumerate(reference_ids) if len(ids) + 2 > 77]
    exact = tokenize([corpus[i] for i in fits])  # truncate=False: nothing may be cut
    assert torch.equal(exact, open_clip.tokenize([corpus[i] for i in fits]))
    for i in too_long:
        n = len(reference_ids[i]) + 2
        message = rf"^text 1 .* is {n} tokens long .* 77.*truncate=True"
        with pytest.raises(TokenizerError, match=message):
            tokenize(["fits", corpus[i]])


@pytest.mark.parametrize("context_length", [2, 5, 16, 78, 200])
def test_other_context_lengths_match_open_clip(
    reference: SimpleTokenizer, corpus: list[str], context_length: int
) -> None:
    sample = corpus[:300] + [t for t in corpus if len(t) > 3000][:5]
    ours = tokenize(sample, context_length=context_length, truncate=True)
    assert ours.shape == (len(sample), context_length)
    assert torch.equal(ours, reference(sample, context_length=context_length))


def _openai_reference() -> SimpleTokenizer:
    """open_clip's copy set back to OpenAI's special-token spelling, the only difference."""
    ref = SimpleTokenizer()
    for old, new in [("<start_of_text>", "<|startoftext|>"), ("<end_of_text>", "<|endoftext|>")]:
        ref.encoder[new] = ref.encoder.pop(old)
    ref.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
    ref.pat = regex.compile(tokmod._PATTERN, regex.IGNORECASE)
    return ref


def test_special_tokens_in_text_follow_openai(reference: SimpleTokenizer) -> None:
    texts = ["<|endoftext|>", "a <|startoftext|> b", "x<|ENDOFTEXT|>y", "!<|endoftext|>",
             "&lt;|endoftext|&gt;", "<start_of_text> <end_of_text>", "<|endoftext", "<||>"]  # fmt: skip
    openai = _openai_reference()
    assert torch.equal(tokenize(texts), openai(texts))
    assert Tokenizer().encode("<|endoftext|>") == [EOT_TOKEN]
    assert Tokenizer().encode("<start_of_text>") != [SOT_TOKEN]  # open_clip's spelling: plain text
    assert reference.encode("<start_of_text>") == [SOT_TOKEN]  # ... open_clip's special token


def test_ascii_fast_path_cleans_as_the_reference() -> None:
    rng = random.Random(3)
    alphabet = [chr(c) for c in range(0x20, 0x7F)] + ["\t", "\n", "\r", "\r\n", "  "]
    noisy = alphabet + ["&amp;", "&#39;", "\x0b", "\x0c", "\x1c", "\x00", "\x1b[1m", "\x7f"]
    for pool in (alphabet, noisy):
        for _ in range(2000):
            text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))
            assert tokmod._clean(text) == _clean_lower(text), repr(text)


# --- behaviour ---------------------------------------------------------------------------------
def test_empty_and_blank_texts() -> None:
    expected = [SOT_TOKEN, EOT_TOKEN] + [0] * 75
    assert tokenize("").tolist() == [expected]
    assert tokenize(["", "  \n\t", "\u3000"]).tolist() == [expected] * 3
    assert Tokenizer().encode("") == []


def test_batch_shapes_and_inputs() -> None:
    assert tokenize("a cat").shape == (1, 77)
    assert tokenize(["a", "b", "c"]).shape == (3, 77)
    assert tokenize(("a", "b"), context_length=16).shape == (2, 16)
    assert tokenize([]).shape == (0, 77) and tokenize([]).dtype == torch.long
    assert torch.equal(tokenize(t for t in ["a", "b"]), tokenize(["a", "b"]))
    assert torch.equal(Tokenizer()(["a photo"]), tokenize(["a photo"]))
    assert get_tokenizer() is get_tokenizer()


def test_truncation_cuts_and_ends_with_end_token() -> None:
    text = "word " * 100
    ids = tokenize(text, truncate=True)[0]
    assert ids[0] == SOT_TOKEN and ids[-1] == EOT_TOKEN
    assert ids[1:-1].tolist() == Tokenizer().encode(text)[:75]
    short = tokenize(text, context_length=5, truncate=True)[0].tolist()
    assert short == [SOT_TOKEN, *Tokenizer().encode(text)[:3], EOT_TOKEN]
    # exactly full: 75 words + start + end fit without truncation
    assert tokenize("word " * 75)[0, -1] == EOT_TOKEN


def test_error_messages_say_what_to_do() -> None:
    message = r"text 2 \('word word .*'\) is 102 tokens long.*context length 77.*truncate=True"
    with pytest.raises(TokenizerError, match=message):
        tokenize(["a", "b", "word " * 100])
    with pytest.raises(TokenizerError, match=r"is 12 tokens long.*context length 11"):
        tokenize("word " * 10, context_length=11)
    with pytest.raises(TokenizerError, match="text 1 is a int, not a string"):
        tokenize(["a", 3])  # type: ignore[list-item]
    with pytest.raises(TokenizerError, match="at least 2"):
        tokenize("a", context_length=1)
    with pytest.raises(TokenizerError, match="bytes"):
        tokenize(b"a cat")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="list of strings"):
        tokenize(3)  # type: ignore[arg-type]


def test_decode_round_trip_on_plain_text() -> None:
    tok = get_tokenizer()
    for text in ["a photo of a cat", "the quick brown fox jumps over the lazy dog", "café 東京 👍🏽",
                 "supercalifragilistic rendering of 3 cats", ""]:  # fmt: skip
        assert tok.decode(tokenize(text)[0]) == text
        assert tok.decode(tok.encode(text)) == text
    # BPE marks word ends only, so punctuation comes back as its own word; case is not restored
    assert tok.decode(tokenize("A photo of a cat.")[0].tolist()) == "a photo of a cat ."
    # id 0 is "!" inside a word, not padding: it must survive decoding
    assert 0 in tok.encode("wow!$") and tok.decode(tok.encode("wow!$")) == "wow !$"
    assert tok.decode(tokenize("wow!$")[0]) == "wow !$"


def test_decode_rejects_bad_ids() -> None:
    with pytest.raises(TokenizerError, match="49408 is not in the vocabulary"):
        get_tokenizer().decode([49408])
    with pytest.raises(TokenizerError, match="one sequence"):
        get_tokenizer().decode(tokenize(["a", "b"]))


def test_caches_stay_bounded_and_correct(
    monkeypatch: pytest.MonkeyPatch, corpus: list[str]
) -> None:
    monkeypatch.setattr(tokmod, "_MAX_CACHE", 16)
    tok = Tokenizer()
    sample = corpus[:400]
    first = tok(sample, truncate=True)
    assert len(tok._chunk_cache) <= 16 and len(tok._word_cache) <= 16
    assert torch.equal(first, tokenize(sample, truncate=True))
    tok._encode_cached.cache_clear()
    assert torch.equal(tok(sample, truncate=True), first)
    long_text = "a photo of a cat " * 40  # longer than _MAX_CACHED_TEXT: not kept in the LRU
    before = tok._encode_cached.cache_info().currsize
    assert tok.encode(long_text) == get_tokenizer().encode(long_text)
    assert tok._encode_cached.cache_info().currsize == before


def test_threads_share_one_tokenizer(corpus: list[str]) -> None:
    tok = Tokenizer()
    expected = tokenize(corpus[:1000], truncate=True)
    results: list[torch.Tensor] = []

    def work(offset: int) -> None:
        texts = corpus[offset:1000] + corpus[:offset]
        out = tok(texts, truncate=True)
        results.append(torch.cat([out[1000 - offset :], out[: 1000 - offset]]))

    threads = [threading.Thread(target=work, args=(k * 250,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(torch.equal(r, expected) for r in results)


def test_import_does_no_work() -> None:
    code = (
        "import sys, clipforge.tokenizer as t; "
        "assert t._default is None, 'vocabulary read at import'; "
        "assert 'ftfy' not in sys.modules, 'ftfy imported at import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
