"""clipforge's metrics equal CLIP_benchmark's on the same model (in open_clip form) and data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import clipforge
from clipforge.eval.eval_data import load_eval_data
from clipforge.eval.run import evaluate_retrieval_data, evaluate_zeroshot_data

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 220, 30),
           "black": (10, 10, 10), "white": (250, 250, 250), "purple": (130, 40, 160)}  # fmt: skip


def _data(root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(3):
            noise = (torch.rand(40, 40, 3, generator=g) * 60 - 30).round()
            pixels = (torch.tensor(rgb).float() + noise).clamp(0, 255).byte().numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


class _Labelled(torch.utils.data.Dataset):
    """The dataset shape CLIP_benchmark reads (it looks up ``dataset.classes``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def _open_clip_model(tmp_path: Path):
    import json

    import open_clip

    model = clipforge.create_model("tiny-vit", seed=0)
    pt = clipforge.convert(clipforge.save(model, tmp_path / "m.safetensors"), tmp_path / "oc.pt", to="open_clip")
    cfg = json.loads(pt.with_suffix(".json").read_text())
    ref = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])
    ref.load_state_dict(torch.load(pt, weights_only=True))
    return model, ref.eval()


def test_zeroshot_and_retrieval_equal_clip_benchmark(tmp_path: Path) -> None:
    import open_clip
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    data = load_eval_data(str(_data(tmp_path / "colours")))
    ours, reference = _open_clip_model(tmp_path)
    preprocess = clipforge.create_preprocess(ours)
    templates = ["a photo of a {c}.", "a {c} square."]  # CLIP_benchmark's placeholder; ours takes both
    images = torch.stack([preprocess(im()) for im in data.images])
    labels = torch.tensor(data.labels)
    loader = torch.utils.data.DataLoader(_Labelled(images, labels, data.classnames), batch_size=5)
    theirs = zeroshot_classification.evaluate(reference, loader, open_clip.tokenize, data.classnames, templates,
                                              device="cpu", amp=False)  # fmt: skip
    mine = evaluate_zeroshot_data(ours, preprocess, data, templates)
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert mine[key] == pytest.approx(theirs[key], abs=1e-9), key

    data.captions = [[f"a {data.classnames[y]} square", f"something {data.classnames[y]}"] for y in data.labels]
    pairs = list(zip(images, data.captions))
    loader = torch.utils.data.DataLoader(pairs, batch_size=4, collate_fn=lambda b: (torch.stack([x[0] for x in b]), [x[1] for x in b]))
    theirs = zeroshot_retrieval.evaluate(reference, loader, open_clip.tokenize, device="cpu", amp=False, recall_k_list=[1, 5, 10])
    mine = evaluate_retrieval_data(ours, preprocess, data)
    for k in (1, 5, 10):
        for key in (f"image_retrieval_recall@{k}", f"text_retrieval_recall@{k}"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
