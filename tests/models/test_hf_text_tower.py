"""The Hugging Face text tower (XLM-RoBERTa) and its tokenizer, proven against open_clip's
HFTextEncoder / HFTokenizer on a tiny encoder and a tokenizer trained here (no network)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipforge.checkpoint.open_clip import to_open_clip
from clipforge.checkpoint.strict import load_strict
from clipforge.config import CLIPConfig
from clipforge.errors import CheckpointError, ConfigError
from clipforge.factory import create_model
from clipforge.models.clip import CLIP
from clipforge.models.hf_text_tower import KNOWN_HF_CONFIGS, hf_config
from clipforge.models.hf_tokenizer import HFTokenizer, clean_whitespace
from clipforge.registry import get_model_config

TEXTS = ["a photo of a cat", "ein Foto einer Katze", "", "una foto di un gatto che dorme sul divano",
         "東京の夜景", "x " * 100]  # fmt: skip
_TOKENIZER_TEST = Path(__file__).parents[1] / "test_tokenizer.py"


def _clip_corpus(n: int) -> list[str]:
    """The CLIP tokenizer's varied test corpus (scripts, emoji, HTML, mojibake, control chars)."""
    spec = importlib.util.spec_from_file_location("clip_tokenizer_corpus", _TOKENIZER_TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._corpus(n)


def _train_tokenizer(directory: Path) -> int:
    """A real XLM-R-style tokenizer (SentencePiece Unigram, <s>=0 <pad>=1 </s>=2 <unk>=3), trained
    on the corpus and saved as open_clip's HFTokenizer reads it; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    # Trained on cleaned text, as it will be used (ftfy replaces the corpus' lone surrogates); a
    # Unigram vocabulary must hold every character it saw, so the size follows the alphabet.
    texts = [clean_whitespace(t) for t in _clip_corpus(2000) + TEXTS]
    alphabet = len(set("".join(texts)))
    trainer = trainers.UnigramTrainer(vocab_size=alphabet + 500, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")  # fmt: skip
    fast.save_pretrained(directory)
    return len(fast)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A directory with a tiny XLM-RoBERTa config.json and a trained tokenizer."""
    from transformers import XLMRobertaConfig

    directory = tmp_path_factory.mktemp("tiny-xlmr")
    vocab = _train_tokenizer(directory)
    XLMRobertaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=80, type_vocab_size=1, layer_norm_eps=1e-5,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2).save_pretrained(directory)  # fmt: skip
    return directory


def _config(encoder_dir: Path, pooler: str = "mean_pooler", proj: str | None = "mlp") -> CLIPConfig:
    return CLIPConfig.from_dict({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"hf_model_name": str(encoder_dir), "hf_tokenizer_name": str(encoder_dir),
                     "hf_pooler_type": pooler, "hf_proj_type": proj},
    })  # fmt: skip


def _open_clip_twin(model: CLIP, tmp_path: Path, name: str) -> torch.nn.Module:
    """open_clip's own model, built by its factory from our exported config and weights."""
    pt = to_open_clip(model, tmp_path / f"{name}.pt")
    open_clip.add_model_config(pt.with_suffix(".json"))
    return open_clip.create_model(name, pretrained=str(pt)).eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max().item()


@pytest.mark.parametrize(
    "pooler, proj",
    [("mean_pooler", "mlp"), ("mean_pooler", "linear"), ("cls_pooler", "linear"), ("cls_last_hidden_state_pooler", "mlp")],
)
def test_features_match_open_clip(encoder_dir: Path, tmp_path: Path, pooler: str, proj: str) -> None:
    model = create_model(_config(encoder_dir, pooler, proj), seed=0)
    ref = _open_clip_twin(model, tmp_path, f"cf-test-xlmr-{pooler}-{proj}")
    assert type(ref).__name__ == "CustomTextCLIP"
    assert set(ref.state_dict()) == set(model.state_dict())  # the identity table: same names
    tokens = HFTokenizer(encoder_dir)(TEXTS)  # (6, 77), padded with <pad>=1
    images = torch.randn(len(TEXTS), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _max_diff(model.encode_text(tokens), ref.encode_text(tokens)) <= 1e-5
        assert _max_diff(model.encode_image(images), ref.encode_image(images)) <= 1e-5
        short = tokens[:5]  # without the text that fills the context: trimming drops columns
        assert model.encode_text(short).shape == (5, 32)
        assert _max_diff(model.encode_text(short), ref.encode_text(short)) <= 1e-5
        assert _max_diff(model.encode_text(short), model.encode_text(short, trim_padding=False)) <= 1e-6


def test_reloads_from_the_open_clip_export_and_clipforge_file(encoder_dir: Path, tmp_path: Path) -> None:
    from clipforge.checkpoint import load, save

    model = create_model(_config(encoder_dir), seed=1)
    tokens = HFTokenizer(encoder_dir)(TEXTS)
    for path in [to_open_clip(model, tmp_path / "xlmr.pt"), save(model, tmp_path / "xlmr.safetensors")]:
        reloaded, _ = load(path)
        assert reloaded.config == model.config
        with torch.no_grad():
            assert torch.equal(reloaded.encode_text(tokens), model.encode_text(tokens))


def test_tokenizer_ids_equal_open_clip_on_the_corpus(encoder_dir: Path) -> None:
    corpus = _clip_corpus(10_000)
    ours, theirs = HFTokenizer(encoder_dir), open_clip.tokenizer.HFTokenizer(str(encoder_dir))
    for start in range(0, len(corpus), 1000):
        chunk = corpus[start : start + 1000]
        assert torch.equal(ours(chunk), theirs(chunk)), start
    assert ours(["x " * 200]).shape == (1, 77)  # truncated to the context length
    assert ours(["a cat"], context_length=16)[0, -1].item() == ours.tokenizer.pad_token_id


def test_known_encoders_build_offline_with_open_clip_shapes(tmp_path: Path) -> None:
    # The published models' encoders come from KNOWN_HF_CONFIGS; open_clip reads the same values
    # from a config.json. Built on the meta device: shapes only, no memory.
    for name, hf_name in [("xlm-roberta-base-ViT-B-32", "xlm-roberta-base"), ("roberta-ViT-B-32", "roberta-base")]:
        (tmp_path / hf_name).mkdir()
        hf_config(hf_name).save_pretrained(tmp_path / hf_name)
        cfg = json.loads(get_model_config(name).to_json())
        cfg["text_cfg"].update(hf_model_name=str(tmp_path / hf_name), hf_model_pretrained=False)
        with torch.device("meta"):
            ours = CLIP(get_model_config(name))
            ref = open_clip.model.CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert ours.text.vocab_size == KNOWN_HF_CONFIGS["roberta-base"]["vocab_size"]


def test_a_mismatched_checkpoint_names_the_key(encoder_dir: Path) -> None:
    model = create_model(_config(encoder_dir), seed=0)
    state = dict(model.state_dict())
    del state["text.proj.2.weight"]
    with pytest.raises(CheckpointError, match=r"missing key 'text\.proj\.2\.weight'"):
        load_strict(model, state, source="test")
    state = dict(model.state_dict())
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.zeros(5, 64)
    with pytest.raises(CheckpointError, match=r"shape mismatch for key 'text\.transformer\.embeddings\.word_embeddings\.weight'"):
        load_strict(model, state, source="test")


def test_bad_text_tower_settings_are_config_errors(encoder_dir: Path) -> None:
    with pytest.raises(ConfigError, match="hf_pooler_type 'max_pooler'"):
        CLIP(_config(encoder_dir, pooler="max_pooler"))
    with pytest.raises(ConfigError, match="width 64 differs from embed_dim 32"):
        CLIP(_config(encoder_dir, proj=None))
    with pytest.raises(ConfigError, match="config.json"):
        CLIP(_config(encoder_dir.parent / "no-such-encoder"))


def test_lock_text_freezes_the_whole_hf_tower(encoder_dir: Path) -> None:
    model = create_model(_config(encoder_dir), seed=0)
    params = model.text_tower_parameters()
    assert {id(p) for p in params} == {id(p) for p in model.text.parameters()}
    assert len(params) > 0 and model.dtype == torch.float32


def test_engine_runs_the_image_tower_of_an_hf_text_model(encoder_dir: Path) -> None:
    from clipforge.inference.engine import Engine, EngineConfig

    model = create_model(_config(encoder_dir), seed=0)
    engine = Engine(model, EngineConfig(precision="fp32", pack_weights=False))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _max_diff(engine.encode_images(images), model.encode_image(images)) <= 1e-5


def test_engine_text_path_matches_the_hf_text_tower(encoder_dir: Path) -> None:
    from clipforge.inference.engine import Engine, EngineConfig

    model = create_model(_config(encoder_dir), seed=0)
    engine = Engine(model, EngineConfig(precision="fp32", pack_weights=False))
    tokens = HFTokenizer(encoder_dir)(TEXTS)
    with torch.no_grad():
        assert _max_diff(engine.encode_tokens(tokens), model.encode_text(tokens)) <= 1e-5
