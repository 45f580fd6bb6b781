"""Byte-level BPE tokenizer giving OpenAI CLIP's token ids (``clip.tokenize``), only faster.

The vocabulary (49,408 tokens), the text cleaning (``ftfy.fix_text``, HTML unescaped twice,
whitespace collapsed, lower case), the pre-tokenisation pattern and the merge loop are OpenAI's
``simple_tokenizer.py``; a model only understands the ids it was trained on, so none of this may
drift. ``tests/test_tokenizer.py`` checks the ids against open_clip's copy of that code.

Where the time goes, and why this is faster than the reference (``bench/tokenizer.py``):

* Cleaning: ftfy and ``html.unescape`` cannot change printable ASCII without ``&``, which is
  most prompts and captions, so such text skips them (ftfy alone is most of the reference's time).
* Pre-tokenisation and BPE: no pattern match crosses a space, so the ids of a whole
  space-separated chunk ("cat.", "don't") are cached; a known chunk costs one dict look-up.
* Whole texts are cached too (LRU): prompt templates and repeated captions cost one look-up.
* The padded batch is filled in numpy with one masked assignment instead of building
  ``batch * context_length`` Python ints.
"""

from __future__ import annotations

import gzip
import html
import re
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import regex
import torch

from .errors import TokenizerError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "EOT_TOKEN",
    "SOT_TOKEN",
    "VOCAB_SIZE",
    "Tokenizer",
    "get_tokenizer",
    "read_merges",
    "tokenize",
]

DEFAULT_CONTEXT_LENGTH = 77  # every OpenAI / open_clip CLIP text tower has 77 positions
SOT_TOKEN = 49406  # <|startoftext|>
EOT_TOKEN = 49407  # <|endoftext|>; the text tower pools at its position (the largest id)
VOCAB_SIZE = 49408  # 256 bytes + 256 bytes</w> + 48,894 merges + 2 special tokens
# OpenAI keeps the first 49152 - 256 - 2 merges of the file (simple_tokenizer.py), so that
# bytes, merges and special tokens add up to 49,408.
_N_MERGES = 49152 - 256 - 2
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_SPECIALS = {"<|startoftext|>": SOT_TOKEN, "<|endoftext|>": EOT_TOKEN}
# OpenAI's pre-tokenisation pattern, character for character (it needs the `regex` module for
# \p{L} / \p{N}). A literal "<|endoftext|>" in the text becomes the special token, as OpenAI's.
_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Any character that ftfy.fix_text or html.unescape might change: everything but printable ASCII
# without '&', plus tab/newline/CR (ftfy turns "\r\n" into "\n", which the whitespace collapse
# makes equal anyway). Text without one of these skips ftfy, the slow part of cleaning.
_NEEDS_FTFY = re.compile(r"[^\x20-\x25\x27-\x7e\t\n\r]")
# Memory stays bounded over a long indexing job of millions of distinct captions (OpenAI's word
# cache grows without bound): the chunk and word caches are emptied when they reach _MAX_CACHE
# entries, the text cache is an LRU, and only short keys are cached (worst case ~100 MB).
_MAX_CACHE = 1 << 18
_TEXT_CACHE = 1 << 16
_MAX_CACHED_TEXT = 512  # characters; captions are shorter, 10 kB documents rarely repeat
_MAX_CACHED_CHUNK = 64  # characters; words are shorter, long runs are URLs and noise

_ftfy: ModuleType | None = None


def _fix_text(text: str) -> str:
    """ftfy.fix_text, imported on first use: it is slow to import and most text never needs it."""
    global _ftfy
    if _ftfy is None:
        import ftfy

        _ftfy = ftfy
    return _ftfy.fix_text(text)


def _clean(text: str) -> str:
    """OpenAI's ``whitespace_clean(basic_clean(text)).lower()``.

    ``" ".join(text.split())`` is the reference's ``regex.sub(r"\\s+", " ", text).strip()``:
    ``str.split`` and ``regex``'s ``\\s`` differ only on U+001C..U+001F, which ftfy always
    removes (and ``html.unescape`` never produces). It is open_clip 3.x's collapse, and faster.
    """
    # isascii/isprintable are C loops that settle most text before the regex search runs.
    plain = text.isascii() and "&" not in text
    if not (plain and (text.isprintable() or _NEEDS_FTFY.search(text) is None)):
        # Twice, as the reference: captions scraped from the web are often escaped twice.
        text = html.unescape(html.unescape(_fix_text(text)))
    return " ".join(text.split()).lower()


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable character map.

    BPE works on strings; mapping every byte to a printable, non-space character lets any UTF-8
    text be merged without an unknown token and without confusing spaces with symbols.
    """
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


def read_merges(bpe_path: str | None = None) -> list[str]:
    """The merges the vocabulary uses, one "left right" line each, in rank order: the first
    ``49152 - 256 - 2`` lines after the file's version header, as OpenAI keeps them. From the
    packaged gzipped merges file by default, else from ``bpe_path``."""
    if bpe_path is None:
        data = resources.files("clipforge.assets").joinpath(_BPE_FILE).read_bytes()
    else:
        with open(bpe_path, "rb") as f:
            data = f.read()
    lines = gzip.decompress(data).decode("utf-8").split("\n")  # line 0: "#version: 0.2"
    return lines[1 : _N_MERGES + 1]


class Tokenizer:
    """CLIP's byte-level BPE: ``Tokenizer()(["a cat"])`` -> LongTensor (1, 77).

    Building one reads the 1.3 MB merges file (~0.05 s); use :func:`get_tokenizer` for the shared
    instance. Safe to share between threads: the caches are plain dicts written atomically.
    """

    def __init__(self, bpe_path: str | None = None) -> None:
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        merges = [tuple(m.split()) for m in read_merges(bpe_path)]
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += list(_SPECIALS)
        self.encoder: dict[str, int] = {piece: i for i, piece in enumerate(vocab)}
        self.bpe_ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.vocab_size = len(self.encoder)
        if self.vocab_size != VOCAB_SIZE:  # the special-token ids below assume OpenAI's size
            raise TokenizerError(
                f"the merges file {bpe_path or _BPE_FILE} gives {self.vocab_size} tokens, not "
                f"OpenAI's {VOCAB_SIZE}; use OpenAI's bpe_simple_vocab_16e6.txt.gz"
            )
        self.sot_token_id = SOT_TOKEN
        self.eot_token_id = EOT_TOKEN
        self._pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self._word_cache: dict[str, tuple[int, ...]] = {}
        self._chunk_cache: dict[str, tuple[int, ...]] = {}
        self._id_bytes: list[bytes] | None = None  # built by the first decode
        # Per instance, not a decorated method: a class-level lru_cache would keep every
        # Tokenizer alive and share one budget between them.
        self._encode_cached = lru_cache(maxsize=_TEXT_CACHE)(self._encode_uncached)

    # --- encoding ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without the start and end tokens (the reference's ``encode``)."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a string, got {type(text).__name__}")
        return list(self._encode(text))

    def _encode(self, text: str) -> tuple[int, ...]:
        if len(text) <= _MAX_CACHED_TEXT:
            return self._encode_cached(text)
        return self._encode_uncached(text)

    def _encode_uncached(self, text: str) -> tuple[int, ...]:
        ids: list[int] = []
        chunks = self._chunk_cache
        for chunk in _clean(text).split(" "):
            chunk_ids = chunks.get(chunk)
            if chunk_ids is None:
                chunk_ids = self._encode_chunk(chunk)
            ids.extend(chunk_ids)
        return tuple(ids)

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Ids of a space-free piece of cleaned text: pattern pieces, each through BPE."""
        ids: list[int] = []
        for word in self._pattern.findall(chunk):
            ids.extend(self._word_ids(word))
        result = tuple(ids)
        if len(chunk) <= _MAX_CACHED_CHUNK:
            if len(self._chunk_cache) >= _MAX_CACHE:
                self._chunk_cache.clear()
            self._chunk_cache[chunk] = result
        return result

    def _word_ids(self, word: str) -> tuple[int, ...]:
        ids = self._word_cache.get(word)
        if ids is None:
            if word in _SPECIALS:  # OpenAI's bpe cache is seeded with them: never split
                ids = (_SPECIALS[word],)
            else:
                symbols = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
                ids = tuple(self.encoder[piece] for piece in self._bpe(symbols))
            if len(word) <= _MAX_CACHED_CHUNK:
                if len(self._word_cache) >= _MAX_CACHE:
                    self._word_cache.clear()
                self._word_cache[word] = ids
        return ids

    def _bpe(self, symbols: str) -> list[str]:
        """Merge the byte symbols of one word, lowest-ranked pair first (the reference's loop).

        The last symbol carries "</w>" so a piece at the end of a word has its own id.
        """
        word = [*symbols[:-1], symbols[-1] + "</w>"]
        ranks = self.bpe_ranks
        never = len(ranks)
        while len(word) > 1:
            rank, i = min((ranks.get(pair, never), i) for i, pair in enumerate(zip(word, word[1:])))
            if rank == never:
                break
            first, second = word[i], word[i + 1]
            # Merge every occurrence of the pair, left to right, as the reference does.
            merged: list[str] = []
            j = 0
            while j < len(word):
                if j < len(word) - 1 and word[j] == first and word[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(word[j])
                    j += 1
            word = merged
        return word

    # --- batches -------------------------------------------------------------------------------
    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        truncate: bool = False,
    ) -> torch.Tensor:
        """Texts -> LongTensor (batch, context_length): start token, text, end token, zeros.

        Text longer than ``context_length - 2`` tokens raises :class:`TokenizerError` unless
        ``truncate=True``; then it is cut and the last position holds the end token, as OpenAI's
        ``clip.tokenize(truncate=True)`` (the text tower reads the sequence at that token).
        """
        texts = _as_list(texts)
        if not isinstance(context_length, int) or context_length < 2:
            raise TokenizerError(
                f"context_length must be an integer of at least 2 (start and end tokens), "
                f"got {context_length!r}"
            )
        room = context_length - 2
        encode = self._encode
        flat: list[int] = []
        lengths: list[int] = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TokenizerError(f"text {index} is a {type(text).__name__}, not a string")
            ids = encode(text)
            if len(ids) > room:
                if not truncate:
                    raise _too_long(index, text, len(ids) + 2, context_length)
                ids = ids[:room]
            flat.extend(ids)
            lengths.append(len(ids))
        return torch.from_numpy(_pad(flat, lengths, context_length))

    # --- decoding ------------------------------------------------------------------------------
    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Ids -> text. Start/end tokens are dropped and ids after the last end token are
        padding. Each word ends in a space (that is all BPE knows), so "cat." comes back as
        "cat ." and the result is stripped; the cleaning (lower case, ftfy) is not undone.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                shape = tuple(ids.shape)
                raise TokenizerError(f"decode takes one sequence of ids, got shape {shape}")
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if EOT_TOKEN in ids:
            ids = ids[: len(ids) - ids[::-1].index(EOT_TOKEN)]  # up to and with the last EOT
        table = self._decode_table()
        pieces = []
        for i in ids:
            if not 0 <= i < len(table):
                raise TokenizerError(f"token id {i} is not in the vocabulary (0..{len(table) - 1})")
            if i != SOT_TOKEN and i != EOT_TOKEN:
                pieces.append(table[i])
        return b"".join(pieces).decode("utf-8", errors="replace").strip()

    def _decode_table(self) -> list[bytes]:
        """Bytes of each id, "</w>" turned into a space (built on first use: encoding is the
        common case)."""
        if self._id_bytes is None:
            table = []
            for piece in self.encoder:  # insertion order == id order
                end = piece.endswith("</w>") and piece not in _SPECIALS
                body = piece[:-4] if end else piece
                raw = bytes(self.byte_decoder[c] for c in body) if piece not in _SPECIALS else b""
                table.append(raw + (b" " if end else b""))
            self._id_bytes = table
        return self._id_bytes


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise TokenizerError("texts are bytes; decode them to str first (data.decode('utf-8'))")
    try:
        return list(texts)
    except TypeError:
        raise TokenizerError(
            f"texts must be a string or a list of strings, got {type(texts).__name__}"
        ) from None


def _too_long(index: int, text: str, n_tokens: int, context_length: int) -> TokenizerError:
    start = text[:40] + ("..." if len(text) > 40 else "")
    return TokenizerError(
        f"text {index} ({start!r}) is {n_tokens} tokens long with the start and end tokens, "
        f"more than the context length {context_length}; shorten it or pass truncate=True "
        f"to cut it (the last token stays the end token)"
    )


def _pad(flat: list[int], lengths: list[int], context_length: int) -> np.ndarray:
    """Start token, each text's ids, end token, zeros: (batch, context_length) int64.

    One masked assignment in numpy: building the padded rows as Python lists cost ~10x more
    than tokenizing warm-cached text.
    """
    batch = len(lengths)
    n = np.array(lengths, dtype=np.int64)  # (batch,) text ids per row, at most context_length - 2
    out = np.zeros((batch, context_length), dtype=np.int64)  # (batch, context_length)
    out[:, 0] = SOT_TOKEN
    column = np.arange(context_length)  # (context_length,)
    text_positions = (column >= 1) & (column <= n[:, None])  # (batch, context_length)
    out[text_positions] = np.array(flat, dtype=np.int64)  # row-major order == order of flat
    out[np.arange(batch), n + 1] = EOT_TOKEN
    return out


_default: Tokenizer | None = None
_default_lock = threading.Lock()


def get_tokenizer() -> Tokenizer:
    """The shared default tokenizer, built on first use (reading the vocabulary takes ~0.05 s)."""
    global _default
    if _default is None:
        with _default_lock:  # two threads starting at once build it once
            if _default is None:
                _default = Tokenizer()
    return _default


def tokenize(
    texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
) -> torch.Tensor:
    """OpenAI's ``clip.tokenize``: texts -> LongTensor (batch, context_length), zero-padded.

    Raises :class:`TokenizerError` for text longer than ``context_length`` tokens (start and end
    included) unless ``truncate=True``.
    """
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)
