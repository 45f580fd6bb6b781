"""Byte-level BPE tokenizer, token for token OpenAI CLIP's ``simple_tokenizer``.

Same 49,408-token vocabulary, same cleaning (ftfy, HTML unescaped twice, whitespace collapsed,
lower-cased), same pre-tokenisation pattern and merges. Faster than the reference because
(a) ASCII text that ftfy and html.unescape cannot change skips them, (b) whole texts and single
words are cached, and (c) the batch is padded in one tensor call.
"""

from __future__ import annotations

import gzip
import html
from functools import cache, lru_cache
from importlib import resources
from typing import Iterable

import regex
import torch

from .errors import TokenizerError

__all__ = ["Tokenizer", "get_tokenizer", "tokenize", "SOT_TOKEN", "EOT_TOKEN", "DEFAULT_CONTEXT_LENGTH"]

DEFAULT_CONTEXT_LENGTH = 77
SOT_TOKEN = 49406  # <|startoftext|>
EOT_TOKEN = 49407  # <|endoftext|>
_N_MERGES = 49152 - 256 - 2  # merges used by OpenAI: vocab 49,408 = 2*256 bytes + merges + 2 specials

# ASCII text made only of printable characters (plus tab/newline/CR) and without '&' is left
# unchanged by ftfy.fix_text and html.unescape: skipping them is the main speed-up.
_PLAIN_ASCII = regex.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")
_WHITESPACE = regex.compile(r"\s+")


@cache
def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable unicode map (avoids whitespace/control chars)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _clean(text: str) -> str:
    """ftfy + HTML unescape (twice, as the reference) + whitespace collapse + lower case."""
    if not _PLAIN_ASCII.fullmatch(text):
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class Tokenizer:
    """CLIP's byte-level BPE. ``Tokenizer()(["a cat"]) -> LongTensor (1, 77)``."""

    def __init__(self, bpe_path: str | None = None) -> None:
        byte_encoder = _bytes_to_unicode()
        self.byte_encoder = byte_encoder
        self.byte_decoder = {v: k for k, v in byte_encoder.items()}
        merges = [tuple(m.split()) for m in _read_merges(bpe_path)[1 : _N_MERGES + 1]]
        vocab = list(byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder: dict[str, int] = dict(zip(vocab, range(len(vocab))))
        self.decoder: dict[int, str] = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = dict(zip(merges, range(len(merges))))
        self.vocab_size = len(self.encoder)
        self._word_cache: dict[str, list[int]] = {
            "<|startoftext|>": [SOT_TOKEN],
            "<|endoftext|>": [EOT_TOKEN],
        }
        self.pattern = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        # Whole-text cache: prompts ("a photo of a {}.") and captions repeat a lot.
        self.encode = lru_cache(maxsize=65536)(self._encode)  # type: ignore[method-assign]

    def _bpe(self, token: str) -> tuple[str, ...]:
        """Merge the symbols of one pre-token, lowest-ranked pair first (the reference loop)."""
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        ranks = self.bpe_ranks
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: ranks.get(p, 1 << 30))
            if bigram not in ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def _word_ids(self, token: str) -> list[int]:
        ids = self._word_cache.get(token)
        if ids is None:
            encoded = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids = [self.encoder[piece] for piece in self._bpe(encoded)]
            self._word_cache[token] = ids
        return ids

    def _encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        ids: list[int] = []
        for token in self.pattern.findall(_clean(text)):
            ids.extend(self._word_ids(token))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        specials = {SOT_TOKEN, EOT_TOKEN, 0}
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in specials)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(
        self,
        texts: str | list[str],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        truncate: bool = False,
    ) -> torch.Tensor:
        """Texts -> (batch, context_length) ids: start, text, end, zero padding."""
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise TokenizerError(f"context_length must be at least 2, got {context_length}")
        rows = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TokenizerError(f"text {index} is a {type(text).__name__}, not a string")
            row = [SOT_TOKEN, *self.encode(text), EOT_TOKEN]
            if len(row) > context_length:
                if not truncate:
                    raise TokenizerError(
                        f"text {index} is {len(row)} tokens long, more than the context length "
                        f"{context_length}; shorten it or pass truncate=True"
                    )
                row = row[:context_length]
                row[-1] = EOT_TOKEN  # as OpenAI's truncate: the sequence still ends with EOT
            rows.append(row + [0] * (context_length - len(row)))
        if not rows:
            return torch.zeros(0, context_length, dtype=torch.long)
        return torch.tensor(rows, dtype=torch.long)  # (batch, context_length)


def _read_merges(bpe_path: str | None) -> list[str]:
    if bpe_path is None:
        ref = resources.files("clipforge.assets").joinpath("bpe_simple_vocab_16e6.txt.gz")
        data = ref.read_bytes()
    else:
        with open(bpe_path, "rb") as f:
            data = f.read()
    return gzip.decompress(data).decode("utf-8").split("\n")


@cache
def get_tokenizer() -> Tokenizer:
    """The shared default tokenizer, built on first use (reading the vocabulary takes ~0.3 s)."""
    return Tokenizer()


def tokenize(
    texts: str | list[str], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
) -> torch.Tensor:
    """OpenAI's ``clip.tokenize``: texts -> LongTensor (batch, context_length)."""
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)
