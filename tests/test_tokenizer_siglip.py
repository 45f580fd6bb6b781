"""SigLIP / SigLIP 2 tokenizers against open_clip's ``HFTokenizer`` / ``get_tokenizer`` on the
10,000-text corpus of test_tokenizer.py. The hub's tokenizer files cannot be downloaded here, so
each test builds a real one: a SentencePiece-style Unigram model wrapped as T5's fast tokenizer
(SigLIP's 32k vocabulary is T5's) and a byte-fallback BPE wrapped as Gemma's (SigLIP 2's), both
trained on the corpus with the ``tokenizers`` library and saved as a hub repository would hold them."""

from __future__ import annotations

import importlib.util
import json
from importlib import resources
from pathlib import Path

import open_clip
import pytest
import torch

from clipforge.config import CLIPConfig, apply_overrides
from clipforge.errors import TokenizerError
from clipforge.models.hf_tokenizer import TOKENIZER_FILES, HFTokenizer, canonicalize_text, text_tokenizer


def _corpus_module():
    spec = importlib.util.spec_from_file_location("_tokenizer_corpus", Path(__file__).with_name("test_tokenizer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus_module()._corpus(10_000)


def _encodable(texts: list[str]) -> list[str]:
    """The trainers need UTF-8: the corpus also holds lone surrogates (for the tokenizers)."""
    return [t for t in texts if not any(0xD800 <= ord(c) <= 0xDFFF for c in t)]


def _t5_style(texts: list[str], directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=6000, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(tokenizer_object=tok, extra_ids=0, pad_token="<pad>", eos_token="</s>",
                    unk_token="<unk>").save_pretrained(directory)  # fmt: skip
    return directory


def _gemma_style(texts: list[str], directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GemmaTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", *bytes_])
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    # open_clip's SigLIP 2 settings (open_clip/tokenizer.py, SigLipTokenizer): right padding, eos added, no bos
    GemmaTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
                       add_bos_token=False, add_eos_token=True, padding_side="right").save_pretrained(directory)  # fmt: skip
    return directory


@pytest.fixture(scope="module", params=["t5-siglip", "gemma-siglip2"])
def tokenizer_dir(request, corpus: list[str], tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp(request.param)
    training = [canonicalize_text(t) for t in _encodable(corpus[:3000])]
    return (_t5_style if request.param.startswith("t5") else _gemma_style)(training, directory)


def test_corpus_ids_equal_open_clips_hftokenizer(tokenizer_dir: Path, corpus: list[str]) -> None:
    ours = HFTokenizer(tokenizer_dir, context_length=64, clean="canonicalize")
    ref = open_clip.tokenizer.HFTokenizer(str(tokenizer_dir), context_length=64, clean="canonicalize")
    for start in range(0, len(corpus), 1000):
        chunk = corpus[start : start + 1000]
        assert torch.equal(ours(chunk), ref(chunk)), start
    ids = ours(corpus[:2000])
    assert ids.dtype == torch.long and ids.shape == (2000, 64)
    assert (ids[:, -1] == ours.tokenizer.pad_token_id).any() and (ids == ours.tokenizer.eos_token_id).any()


def test_model_config_tokenizer_equals_open_clip_get_tokenizer(tokenizer_dir: Path, corpus: list[str]) -> None:
    """The config's hf_tokenizer_name, context length and tokenizer_kwargs, as open_clip reads
    them from a local-dir: repository."""
    config = CLIPConfig.from_json(resources.files("clipforge.model_configs").joinpath("ViT-B-16-SigLIP2.json").read_text())
    config = apply_overrides(config, {"text.hf_tokenizer_name": str(tokenizer_dir)})
    (tokenizer_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": config.to_dict()}))
    ref = open_clip.get_tokenizer(f"local-dir:{tokenizer_dir}")
    ours = text_tokenizer(config.text)
    assert ours.context_length == 64
    assert torch.equal(ours(corpus[:3000]), ref(corpus[:3000]))


def test_strip_sep_token_as_open_clip(tmp_path: Path, corpus: list[str]) -> None:
    """CLIPA's BERT tokenizer: [SEP] becomes 0 (open_clip's strip_sep_token)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_encodable(corpus[:2000]), trainers.WordPieceTrainer(vocab_size=1000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path)
    ours = HFTokenizer(tmp_path, context_length=32, clean="lower", strip_sep_token=True)
    ref = open_clip.tokenizer.HFTokenizer(str(tmp_path), context_length=32, clean="lower", strip_sep_token=True)
    assert torch.equal(ours(corpus[:2000]), ref(corpus[:2000]))
    assert not (ours(corpus[:2000]) == 3).any()


def test_offline_error_names_repository_files_and_place(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = CLIPConfig.from_json(resources.files("clipforge.model_configs").joinpath("ViT-B-16-SigLIP.json").read_text())
    with pytest.raises(TokenizerError) as info:
        text_tokenizer(config.text, download=False)
    message = str(info.value)
    assert "'timm/ViT-B-16-SigLIP'" in message and "https://huggingface.co/timm/ViT-B-16-SigLIP" in message
    assert all(name in message for name in TOKENIZER_FILES) and "models--timm--ViT-B-16-SigLIP" in message
    with pytest.raises(TokenizerError, match="does not hold a readable tokenizer"):
        HFTokenizer(tmp_path)


def test_engine_encodes_texts_with_the_towers_own_tokenizer(tokenizer_dir: Path, corpus: list[str]) -> None:
    """Engine.encode_texts on a SigLIP model tokenizes with the tokenizer its config names and
    runs the bidirectional tower on the full padded ids: the model's own features, in order."""
    import torch.nn.functional as F

    from clipforge import create_model
    from clipforge.factory import create_tokenizer
    from clipforge.inference.engine import Engine, EngineConfig

    config = CLIPConfig.from_json(resources.files("clipforge.model_configs").joinpath("tiny-siglip.json").read_text())
    tokenizer = HFTokenizer(tokenizer_dir)
    config = apply_overrides(config, {"text.hf_tokenizer_name": str(tokenizer_dir), "text.vocab_size": len(tokenizer.tokenizer)})
    model = create_model(config, seed=0)
    texts = corpus[:40]
    engine = Engine(model, EngineConfig(precision="fp32", text_batch_size=16))
    ids = create_tokenizer(model)(texts)
    assert torch.equal(ids, text_tokenizer(config.text)(texts))
    with torch.no_grad():
        expected = F.normalize(model.encode_text(ids), dim=-1)
    assert (engine.encode_texts(texts) - expected).abs().max() <= 1e-5
