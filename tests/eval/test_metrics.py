"""Metrics on hand-built cases with known answers, and the zero-shot classifier's definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.eval.retrieval import retrieval_metrics
from clipforge.eval.templates import load_classnames, load_templates
from clipforge.eval.zeroshot import classification_metrics, zero_shot_classifier
from clipforge.factory import create_model
from clipforge.tokenizer import tokenize


def test_classification_metrics_on_a_known_confusion() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])  # 4 of 6 right
    logits = F.one_hot(predicted, 3).float()
    m = classification_metrics(logits, labels, 3)
    assert m["acc1"] == pytest.approx(4 / 6)
    assert m["acc5"] == 1.0  # top-3 of 3 classes
    assert m["mean_per_class_recall"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_retrieval_with_several_captions_per_image() -> None:
    images = torch.eye(3)  # three orthogonal images
    # captions 0,1 belong to image 0; caption 2 to image 1; caption 3 to image 2 but points at image 1
    texts = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.8, 0.2]])
    m = retrieval_metrics(images, F.normalize(texts, dim=-1), [0, 0, 1, 2], ks=(1, 2))
    assert m["image_retrieval_recall@1"] == pytest.approx(3 / 4)
    assert m["image_retrieval_recall@2"] == 1.0
    # image 2's only caption ranks below caption 2 for image 2? scores for image 2: [0,0,0,0.24]
    assert m["text_retrieval_recall@1"] == pytest.approx(1.0)


def test_zero_shot_classifier_is_the_normalised_mean_of_prompt_embeddings() -> None:
    model = create_model("tiny-vit", seed=0)
    templates = ["a photo of a {}.", "an emoji of {}."]
    classifier = zero_shot_classifier(model, ["cat", "dog"], templates, batch_size=3)
    assert classifier.shape == (32, 2)
    with torch.no_grad():
        prompts = F.normalize(model.encode_text(tokenize(["a photo of a dog.", "an emoji of dog."])), dim=-1)
    expected = F.normalize(prompts.mean(0), dim=-1)
    assert torch.allclose(classifier[:, 1], expected, atol=1e-6)


def test_shipped_data_and_custom_template_files(tmp_path) -> None:
    assert len(load_classnames("imagenet")) == 1000 and len(load_templates("imagenet")) == 80
    (tmp_path / "t.txt").write_text("a sketch of {}.\nart of {}\n")
    assert load_templates(str(tmp_path / "t.txt")) == ["a sketch of {}.", "art of {}"]
    (tmp_path / "bad.txt").write_text("no placeholder\n")
    with pytest.raises(Exception, match="containing"):
        load_templates(str(tmp_path / "bad.txt"))
