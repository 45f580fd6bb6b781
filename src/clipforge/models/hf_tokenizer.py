"""Hugging Face tokenizers of open_clip text towers (``hf_tokenizer_name``: SigLIP / SigLIP 2,
XLM-RoBERTa and RoBERTa towers, CLIPA's BERT, MetaCLIP 2's XLM-V), with open_clip's
``HFTokenizer`` behaviour:

- the text is cleaned as the model config's ``tokenizer_kwargs["clean"]`` says: ``canonicalize``
  for SigLIP (big_vision's ``canonicalize_text``: punctuation removed, lower case, whitespace
  collapsed, after ftfy and a double HTML unescape), ``lower`` or ``whitespace``;
- ids come from ``transformers.AutoTokenizer`` (SigLIP: T5's SentencePiece, 32,000 pieces;
  SigLIP 2: Gemma's, 256,000), padded to ``context_length`` with the tokenizer's pad id and cut to
  it (the end-of-sequence id survives the cut), as open_clip's ``padding="max_length",
  truncation=True``; ``strip_sep_token`` turns [SEP] into 0 (CLIPA).

The tokenizer files are read from a local directory or from the Hugging Face cache
(``HF_HUB_CACHE``, else ``HF_HOME/hub``); they are downloaded only when ``download=True`` and
``HF_HUB_OFFLINE`` is unset. Otherwise the error names the repository, the files, and where to put
them.
"""

from __future__ import annotations

import html
import os
import string
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..config import TextConfig
from ..errors import TokenizerError

__all__ = ["HFTokenizer", "TOKENIZER_FILES", "CLEAN_FUNCTIONS", "canonicalize_text", "clean_whitespace", "text_tokenizer"]

# What a repository's tokenizer needs (timm/ViT-B-16-SigLIP, timm/ViT-B-16-SigLIP2, ...):
# tokenizer.json is enough for the fast tokenizer; the SentencePiece model is the slow one's.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _basic_clean(text: str) -> str:
    import ftfy  # slow to import; only tokenizing needs it

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _whitespace(text: str) -> str:
    return " ".join(text.split()).strip()


def clean_whitespace(text: str) -> str:
    """open_clip's ``_clean_whitespace`` (its default): ftfy, HTML unescaped twice, whitespace collapsed."""
    return _whitespace(_basic_clean(text))


def canonicalize_text(text: str) -> str:
    """big_vision's ``canonicalize_text`` as open_clip applies it: underscores to spaces,
    punctuation removed, lower case, whitespace collapsed."""
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return _whitespace(text)


# open_clip/tokenizer.py, get_clean_fn
CLEAN_FUNCTIONS: dict[str, Callable[[str], str]] = {
    "canonicalize": lambda t: canonicalize_text(_basic_clean(t)),
    "lower": lambda t: _whitespace(_basic_clean(t)).lower(),
    "whitespace": clean_whitespace,
}


class HFTokenizer:
    """``HFTokenizer(repo_or_dir)(texts) -> (len(texts), context_length)`` int64 ids."""

    def __init__(
        self,
        source: str | Path,
        context_length: int = 77,  # open_clip's HFTokenizer default; SigLIP configs say 64
        clean: str = "whitespace",
        strip_sep_token: bool = False,
        download: bool = True,
    ) -> None:
        if clean not in CLEAN_FUNCTIONS:
            raise TokenizerError(f"unknown tokenizer_kwargs clean {clean!r}; use one of {', '.join(CLEAN_FUNCTIONS)}")
        self.source = str(source)
        self.context_length = context_length
        self.clean = CLEAN_FUNCTIONS[clean]
        self.strip_sep_token = strip_sep_token
        self.tokenizer = _load(self.source, download)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = context_length or self.context_length
        if not texts:
            return torch.zeros(0, n, dtype=torch.long)
        cleaned = [self.clean(t) for t in texts]
        ids = self.tokenizer(cleaned, return_tensors="pt", max_length=n, padding="max_length", truncation=True).input_ids
        if self.strip_sep_token:  # open_clip's HFTokenizer: [SEP] -> 0 (CLIPA pools the last position)
            ids = torch.where(ids == self.tokenizer.sep_token_id, torch.zeros_like(ids), ids)
        return ids.long()  # (batch, n)


def text_tokenizer(cfg: TextConfig, download: bool = True) -> HFTokenizer:
    """The tokenizer a text tower's config names (``hf_tokenizer_name``, ``tokenizer_kwargs``)."""
    if not cfg.hf_tokenizer_name:
        raise TokenizerError("this text tower has no hf_tokenizer_name: use clipforge.tokenize (CLIP's BPE)")
    kwargs: dict[str, Any] = dict(cfg.tokenizer_kwargs or {})
    unknown = set(kwargs) - {"clean", "strip_sep_token"}
    if unknown:
        raise TokenizerError(f"text_cfg key 'tokenizer_kwargs' has {sorted(unknown)}; clipforge reads clean, strip_sep_token")
    return HFTokenizer(cfg.hf_tokenizer_name, cfg.context_length, download=download, **kwargs)


def _load(source: str, download: bool) -> Any:
    from transformers import AutoTokenizer

    if Path(source).is_dir():
        try:
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as e:
            raise TokenizerError(
                f"{source} does not hold a readable tokenizer ({e}); it needs {', '.join(TOKENIZER_FILES)}"
            ) from None
    offline = not download or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:  # the Hugging Face cache first, whatever `download` says
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        if offline:
            raise TokenizerError(_offline_message(source)) from None
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{_offline_message(source)} (download failed: {e})") from None


def _offline_message(repo: str) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (
        f"the tokenizer {repo!r} is not in the Hugging Face cache ({HF_HUB_CACHE}) and cannot be downloaded. "
        f"Copy {', '.join(TOKENIZER_FILES)} (and spiece.model or tokenizer.model if the repository has one) "
        f"from https://huggingface.co/{repo} into a directory and pass that directory, or run "
        f"`huggingface-cli download {repo} {' '.join(TOKENIZER_FILES)}` where there is internet and copy "
        f"the cache folder {HF_HUB_CACHE}/models--{repo.replace('/', '--')} here"
    )
