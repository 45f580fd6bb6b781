"""Inference speed: clipforge's engine (each mode) vs open_clip and transformers, same run, same
random weights, same inputs, same thread count.

Rows: clipforge fp32 / bf16 / bf16 unpacked (plain F.linear) / bf16 + torch.compile / ONNX Runtime
fp32 / ONNX Runtime int8, open_clip fp32 / bf16 autocast, transformers CLIPModel fp32 / bf16
weights. Columns: ViT-B/32 and RN50 image img/s at batch 1 and 32; text texts/s for short prompts
("a photo of a {class}.") and for 77-token texts (from strings: each library's own tokenizer is
part of the work); the lowest cosine similarity of any feature row to the fp32 reference
(clipforge fp32, which equals open_clip fp32 to ~1e-7); the peak memory a row adds (resident
set, model build + its first calls).

The bf16 matmul limit is measured in the same run: first on the GEMM shapes of a ViT-B/32 batch
of 32 and a square one, then, with the fastest shape, as one more contender in the batch-32 image
rotation that does the same FLOPs as the model on 32 images in pure GEMMs, so it meets the same
load as the models. That is done for two calls: torch's matmul (``a @ b``, the issue's "bf16
matmul") and, where oneDNN has them, a linear on a weight packed once in oneDNN's layout (what
clipforge's bf16 CPU engine runs; faster than ``a @ b``, so a stricter limit). Every image row
prints its batch-32 throughput as a percentage of both (model FLOPs counted by
torch.utils.flop_counter).

Unless ``--default-malloc``, glibc's malloc is set to keep freed memory for the whole process
(``clipforge.inference.allocator``, as clipforge's ``embed`` and ``serve`` do): with many models in
one process, its default re-faults tens of MB of activations on every call, for every contender.

All contenders of one cell run side by side, one call each in turn with the order rotating every
round, so load from other processes falls on all alike; the median call is reported.

    python bench/inference.py [--archs ViT-B-32,RN50] [--no-compile] [--no-onnx] [--device cpu]
    python bench/inference.py --archs ViT-B-32,ViT-B-16-SigLIP   # + SigLIP's image tower vs open_clip (timm) and SiglipModel

Text rows run for the first architecture only; a SigLIP's tokenizer is a hub download, so give
it as a later architecture (image rows) unless its tokenizer files are in the Hugging Face cache.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

CLASSES = ["cat", "dog", "golden retriever", "tree frog", "sports car", "airliner", "coffee mug", "pizza",
           "red panda", "lighthouse", "acoustic guitar", "hot air balloon", "jellyfish", "volcano",
           "school bus", "grand piano"]  # fmt: skip
WORDS = "the quick brown fox jumps over lazy dogs near a quiet river under bright stars at night".split()


@dataclass
class Contender:
    name: str
    images: Callable[[torch.Tensor], torch.Tensor]  # (batch, 3, H, W) float32 -> (batch, dim)
    texts: Callable[[list[str]], torch.Tensor] | None  # strings -> (n, dim)
    setup_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# --- memory -----------------------------------------------------------------------------------
def _rss_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> int:
    """Reset the kernel's peak-RSS counter (VmHWM) and return the current RSS in KiB."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _rss_kib("VmRSS")


def peak_mib_since(base_kib: int) -> float:
    return (_rss_kib("VmHWM") - base_kib) / 1024


# --- the matmul limit --------------------------------------------------------------------------
SHAPES = {"qkv 1600x768x2304": (1600, 768, 2304), "mlp 1600x768x3072": (1600, 768, 3072),
          "mlp 1600x3072x768": (1600, 3072, 768), "square 2048": (2048, 2048, 2048)}  # fmt: skip
Gemm = tuple[int, int, int, str]  # (m, k, n, layout): layout "plain" (a @ b) or "packed" (oneDNN)


def gemm_call(gemm: Gemm, dtype: torch.dtype, device: str) -> Callable[[], Any]:
    """One GEMM of the given shape as a zero-argument call: torch's ``a @ b`` on plain row-major
    operands, or oneDNN's linear on a weight packed once (what clipforge's bf16 CPU engine runs)."""
    m, k, n, layout = gemm
    a = torch.randn(m, k, dtype=dtype, device=device)
    if layout == "plain":
        b = torch.randn(k, n, dtype=dtype, device=device)
        return lambda: a @ b
    packed = torch.ops.mkldnn._reorder_linear_weight(torch.randn(n, k, dtype=dtype), None)
    return lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")


def low_dtype(device: str) -> torch.dtype:
    return torch.float16 if device.startswith("cuda") else torch.bfloat16


def low_name(device: str) -> str:
    return "fp16" if device.startswith("cuda") else "bf16"


def gemm_layouts(dtype: torch.dtype, device: str) -> list[str]:
    from clipforge.inference.packed import can_pack

    return ["plain", "packed"] if can_pack(dtype, torch.device(device)) else ["plain"]


def matmul_gflops(dtype: torch.dtype, device: str, seconds: float = 1.0) -> dict[str, tuple[float, Gemm]]:
    """GFLOP/s of one GEMM per shape (a ViT-B/32 batch of 32 = 1,600 tokens, and a square one)
    and per layout."""
    out = {}
    for layout in gemm_layouts(dtype, device):
        for name, (m, k, n) in SHAPES.items():
            gemm = (m, k, n, layout)
            calls, start = _timed_calls(gemm_call(gemm, dtype, device), seconds, device)
            out[f"{name} {layout}"] = (2 * m * k * n * calls / (time.perf_counter() - start) / 1e9, gemm)
    return out


LIMITS = {"plain": "matmul limit", "packed": "packed GEMM limit"}  # layout -> contender name
LIMIT_COLUMNS = {"plain": "% bf16 matmul limit (b32)", "packed": "% packed GEMM limit (b32)"}


def fastest_gemms(gflops: dict[str, tuple[float, Gemm]]) -> dict[str, Gemm]:
    """The fastest shape of each layout."""
    best: dict[str, tuple[float, Gemm]] = {}
    for rate, gemm in gflops.values():
        if gemm[3] not in best or rate > best[gemm[3]][0]:
            best[gemm[3]] = (rate, gemm)
    return {layout: gemm for layout, (_, gemm) in best.items()}


def matmul_limit_contender(gflop_per_image: float, gemm: Gemm, dtype: torch.dtype, device: str) -> Contender:
    """Pure GEMMs of the fastest shape and layout, as many FLOPs as the model spends on the images."""
    m, k, n, _ = gemm
    call = gemm_call(gemm, dtype, device)
    gflop_per_call = 2 * m * k * n / 1e9

    def calls(images: int) -> int:
        return max(1, round(images * gflop_per_image / gflop_per_call))

    def images(x: torch.Tensor) -> torch.Tensor:
        for _ in range(calls(len(x))):
            call()
        return torch.zeros(len(x), 1)

    return Contender(LIMITS[gemm[3]], images, None, extra={"gflop_b32": calls(32) * gflop_per_call})


def _timed_calls(fn: Callable[[], Any], seconds: float, device: str) -> tuple[int, float]:
    for _ in range(3):
        fn()
    _sync(device)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    _sync(device)
    return calls, start


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def image_gflop(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one image through the image tower (matmuls and convolutions), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.encode_image(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


# --- contenders ---------------------------------------------------------------------------------
def clipforge_rows(model, device: str, compile_: bool, onnx: bool) -> list[tuple[str, Callable[[], Contender]]]:
    from clipforge.inference.engine import Engine, EngineConfig

    def engine(name: str, **kw) -> Callable[[], Contender]:
        def build() -> Contender:
            e = Engine(model, EngineConfig(device=device, **kw))
            return Contender(name, e.encode_images, e.encode_texts)

        return build

    low = low_name(device)
    rows = [("clipforge fp32", engine("clipforge fp32", precision="fp32")),
            (f"clipforge {low}", engine(f"clipforge {low}", precision=low))]  # fmt: skip
    if gemm_layouts(low_dtype(device), device) != ["plain"]:  # the packed weights' gain, shown
        rows.append((f"clipforge {low} unpacked", engine(f"clipforge {low} unpacked", precision=low, pack_weights=False)))
    if compile_:
        rows.append((f"clipforge {low} compiled", engine(f"clipforge {low} compiled", precision=low, compile=True)))
    if onnx and not device.startswith("cuda"):
        rows += [("clipforge onnxruntime fp32", lambda: onnx_contender(model, int8=False)),
                 ("clipforge onnxruntime int8", lambda: onnx_contender(model, int8=True))]  # fmt: skip
    return rows


def onnx_contender(model, int8: bool) -> Contender:
    from clipforge.inference.onnx_export import export_onnx
    from clipforge.inference.onnx_runtime import OnnxEngine

    folder = Path(tempfile.mkdtemp(prefix="clipforge-bench-onnx-"))
    start = time.perf_counter()
    export_onnx(model, folder / "fp32")
    if int8:
        from clipforge.inference.quantize import quantize_int8

        quantize_int8(folder / "fp32", folder / "int8")
    e = OnnxEngine(folder / ("int8" if int8 else "fp32"), threads=torch.get_num_threads())
    name = f"clipforge onnxruntime {'int8' if int8 else 'fp32'}"
    return Contender(name, e.encode_images, e.encode_texts, setup_s=time.perf_counter() - start)


def open_clip_rows(model, arch: str, device: str) -> list[tuple[str, Callable[[], Contender]]]:
    low, tag = low_dtype(device), low_name(device)

    def build(amp: bool) -> Contender:
        import open_clip

        from clipforge.checkpoint.open_clip import to_open_clip_state_dict

        oc = open_clip.create_model(arch, quick_gelu=model.config.quick_gelu)
        # open_clip's names (a SigLIP's timm trunk through the table); ours has no position_ids buffers
        oc.load_state_dict(to_open_clip_state_dict(model), strict=False)
        oc = oc.to(device).eval()
        kind = torch.device(device).type

        def run(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(kind, dtype=low, enabled=amp):
                return F.normalize(fn().float(), dim=-1)

        def texts(strings: list[str]) -> torch.Tensor:
            tokenizer = open_clip.get_tokenizer(arch)  # a hub tokenizer (SigLIP's) only when texts are timed
            return torch.cat([run(lambda: oc.encode_text(tokenizer(strings[i : i + 256]).to(device)))
                              for i in range(0, len(strings), 256)])  # fmt: skip

        name = f"open_clip {tag} autocast" if amp else "open_clip fp32"
        return Contender(name, lambda x: run(lambda: oc.encode_image(x.to(device))), texts)

    return [("open_clip fp32", lambda: build(False)), (f"open_clip {tag} autocast", lambda: build(True))]


def transformers_rows(model, device: str) -> list[tuple[str, Callable[[], Contender]]]:
    """transformers' CLIPModel (or SiglipModel for a SigLIP) has no ResNet tower: ViTs only."""
    if model.config.vision.is_resnet:
        return []
    low, tag = low_dtype(device), low_name(device)

    def build(dtype: torch.dtype) -> Contender:
        from transformers import AutoTokenizer, CLIPModel, SiglipModel

        from clipforge.checkpoint.hf import hf_model_type, save_hf_dir

        folder = Path(tempfile.mkdtemp(prefix="clipforge-bench-hf-"))
        save_hf_dir(model, folder)
        cls = SiglipModel if hf_model_type(model.config) == "siglip" else CLIPModel
        hf = cls.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder) if cls is CLIPModel else None  # SigLIP's is not ours to write

        @torch.inference_mode()
        def images(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(hf.get_image_features(pixel_values=x.to(device, dtype)).float(), dim=-1)

        @torch.inference_mode()
        def texts(strings: list[str]) -> torch.Tensor:
            out = []
            for i in range(0, len(strings), 256):
                batch = tokenizer(strings[i : i + 256], padding=True, truncation=True, max_length=77,
                                  return_tensors="pt").to(device)  # fmt: skip
                out.append(F.normalize(hf.get_text_features(**batch).float(), dim=-1))
            return torch.cat(out)

        name = "transformers fp32" if dtype == torch.float32 else f"transformers {tag}"
        return Contender(name, images, texts)

    return [("transformers fp32", lambda: build(torch.float32)), (f"transformers {tag}", lambda: build(low))]


# --- workloads ----------------------------------------------------------------------------------
def short_prompts(n: int) -> list[str]:
    return [f"a photo of a {CLASSES[i % len(CLASSES)]}." for i in range(n)]


def long_texts(n: int) -> list[str]:
    """Texts of more than 77 tokens (truncated by every tokenizer to the full context)."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(90)) for i in range(n)]


@dataclass
class Workload:
    name: str
    run: Callable[[Contender], torch.Tensor]
    unit: str  # what one call processes: images or texts
    items: int
    rounds: int
    images: bool


def workloads(size: int, device: str, with_text: bool, quick: bool) -> list[Workload]:
    g = torch.Generator().manual_seed(0)
    one, batch = torch.randn(1, 3, size, size, generator=g), torch.randn(32, 3, size, size, generator=g)
    shorts, longs = short_prompts(256 if quick else 1024), long_texts(64 if quick else 256)
    out = [Workload("img b1", lambda c: c.images(one), "img/s", 1, 10 if quick else 25, True),
           Workload("img b32", lambda c: c.images(batch), "img/s", 32, 3 if quick else 7, True)]  # fmt: skip
    if with_text:
        out += [Workload("short texts", lambda c: c.texts(shorts), "texts/s", len(shorts), 3, False),
                Workload("77-token texts", lambda c: c.texts(longs), "texts/s", len(longs), 3, False)]  # fmt: skip
    return out


def time_side_by_side(contenders: list[Contender], work: Workload, device: str) -> dict[str, float]:
    """Median seconds per call of each contender, calls interleaved with a rotating order."""
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(work.rounds):
        for c in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:
            start = time.perf_counter()
            work.run(c)
            _sync(device)
            times[c.name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cosine_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1).min())


# --- one architecture ---------------------------------------------------------------------------
def bench_arch(arch: str, args, gemms: dict[str, Gemm]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from clipforge.factory import create_model

    model = create_model(arch, seed=0).eval().requires_grad_(False)
    gflop = image_gflop(model, model.image_size)
    # Text rows for the first architecture only: SigLIP's tokenizer files come from the hub,
    # which this bench does not reach (its text tower's parity is in tests/models/test_siglip.py).
    works = workloads(model.image_size, args.device, with_text=arch == args.archs[0], quick=args.quick)
    builders = clipforge_rows(model, args.device, args.compile, args.onnx)
    builders += open_clip_rows(model, arch, args.device) + transformers_rows(model, args.device)
    if args.fp32_only:
        builders = [(name, build) for name, build in builders if "fp32" in name]
    contenders, memory, features = [], {}, {}
    for name, build in builders:
        base = reset_peak()
        start = time.perf_counter()
        try:
            c = build()
        except Exception as e:  # a peer or optional mode that can't run here is a row that says so
            print(f"[{arch}] {name}: not run ({type(e).__name__}: {e})")
            continue
        features[name] = {w.name: w.run(c) for w in works}  # warm-up: compile, caches, allocator
        c.setup_s = c.setup_s or time.perf_counter() - start
        memory[name] = peak_mib_since(base)
        contenders.append(c)
        print(f"[{arch}] built {name} in {c.setup_s:.1f} s, +{memory[name]:.0f} MiB")
    reference = features["clipforge fp32"]
    low = low_dtype(args.device)
    limiters = [matmul_limit_contender(gflop, gemm, low, args.device) for gemm in gemms.values()]
    timings = {w.name: time_side_by_side(contenders + (limiters if w.name == "img b32" else []), w, args.device)
               for w in works}  # fmt: skip
    limits = {layout: c.extra["gflop_b32"] / timings["img b32"][c.name]  # GFLOP/s under this run's load
              for layout, c in zip(gemms, limiters)}  # fmt: skip
    rows = []
    for c in contenders:
        row: dict[str, Any] = {"arch": arch, "row": c.name}
        for w in works:
            row[f"{w.name} {w.unit}"] = w.items / timings[w.name][c.name]
            if w.name == "img b1":
                row["img b1 ms"] = 1000 * timings[w.name][c.name]
        for layout, limit in limits.items():
            row[LIMIT_COLUMNS[layout]] = 100 * row["img b32 img/s"] * gflop / limit
        row["cos min vs fp32"] = min(cosine_min(features[c.name][w.name], reference[w.name]) for w in works)
        row["peak MiB"] = memory[c.name]
        row["setup s"] = c.setup_s
        rows.append(row)
    print(f"[{arch}] image tower: {gflop:.2f} GFLOP per image; in the b32 rotation: "
          + ", ".join(f"{LIMITS[k]} {v:.0f} GFLOP/s" for k, v in limits.items()))  # fmt: skip
    del contenders, features
    gc.collect()
    return rows, limits


def ratios(rows: list[dict[str, Any]], ours: str, peer: str, column: str, arch: str) -> float | None:
    pick = {r["row"]: r.get(column) for r in rows if r["arch"] == arch}
    if pick.get(ours) is None or not pick.get(peer):
        return None
    return pick[ours] / pick[peer]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="ViT-B-32,RN50")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and texts (a smoke run)")
    parser.add_argument("--default-malloc", dest="keep_freed_memory", action="store_false",
                        help="leave glibc's malloc as it is (it re-faults freed activations on every call)")  # fmt: skip
    parser.add_argument("--fp32-only", action="store_true",
                        help="fp32 rows only, no bf16 limit (the default on a CPU without native bf16, where bf16 "
                             "is emulated and every library's bf16 row measures the emulation)")  # fmt: skip
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.archs = args.archs.split(",")
    if args.device == "cpu" and not args.fp32_only:
        from clipforge.inference.engine import cpu_supports_bf16

        if not cpu_supports_bf16():
            print("this CPU has no native bf16 (AVX-512 BF16 / AMX): fp32 rows only (--fp32-only)")
            args.fp32_only = True
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:  # for every contender alike; see clipforge/inference/allocator.py
        from clipforge.inference.allocator import keep_freed_memory

        print(f"glibc malloc keeps freed memory: {keep_freed_memory()}")
    low = low_dtype(args.device)
    gemm = {} if args.fp32_only else matmul_gflops(low, args.device)
    fastest = fastest_gemms(gemm) if gemm else {}
    print(f"{low} matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, (v, _) in gemm.items())
          + "; fastest: " + ", ".join(f"{layout} {m}x{k}x{n}" for layout, (m, k, n, _) in fastest.items()))  # fmt: skip
    rows, limits = [], {}
    for arch in args.archs:
        arch_rows, limits[arch] = bench_arch(arch, args, fastest)
        rows += arch_rows
    summary = goal_summary(rows, args)
    print_table(f"Inference ({args.device}, {torch.get_num_threads()} threads)", rows)
    print_table("Goals", summary)
    gflops = {k: v for k, (v, _) in gemm.items()}
    path = write_results("inference", rows, args.out, matmul_gflops=gflops, matmul_limit_in_rotation=limits, goals=summary,
                         keep_freed_memory=args.keep_freed_memory)  # fmt: skip
    print(f"wrote {path}")


def fp32_summary(rows: list[dict[str, Any]], args) -> list[dict[str, Any]]:
    """fp32 against fp32: clipforge's engine / each peer, per architecture and column."""
    out = []
    for arch in args.archs:
        for peer in ("open_clip fp32", "transformers fp32"):
            for column in ("img b32 img/s", "img b1 img/s", "short texts texts/s", "77-token texts texts/s"):
                value = ratios(rows, "clipforge fp32", peer, column, arch)
                if value is not None:
                    out.append({"goal": f"{arch} {column[:-6]}: clipforge fp32 / {peer}", "value": value, "target": 1.0,
                                "met": value >= 1.0})  # fmt: skip
    return out


def goal_summary(rows: list[dict[str, Any]], args) -> list[dict[str, Any]]:
    if args.fp32_only:
        return fp32_summary(rows, args)
    low = low_name(args.device)
    vit = args.archs[0]
    modes = {r["row"]: r["img b32 img/s"] for r in rows if r["arch"] == vit and r["row"] in
             (f"clipforge {low}", f"clipforge {low} compiled")}  # fmt: skip
    best = max(modes, key=modes.get)  # the faster of eager and compiled on this machine
    checks = [
        (f"{vit} b32: {mode} / open_clip {low} autocast", mode, f"open_clip {low} autocast", "img b32 img/s", 1.1)
        for mode in modes
    ] + [  # fmt: skip
        (f"short texts: clipforge {low} / open_clip {low} autocast", f"clipforge {low}", f"open_clip {low} autocast",
         "short texts texts/s", 5.0),
        (f"short texts: clipforge {low} / open_clip fp32", f"clipforge {low}", "open_clip fp32", "short texts texts/s", 20.0),
    ]  # fmt: skip
    out = [{"goal": g, "value": ratios(rows, a, b, col, vit), "target": t} for g, a, b, col, t in checks]
    pick = {r["row"]: r for r in rows if r["arch"] == vit}
    for column in LIMIT_COLUMNS.values():  # plain (a @ b) is the measure; packed is stricter
        if best in pick and column in pick[best]:
            out.append({"goal": f"{vit} b32: {best} {column[:-6]}", "value": pick[best][column], "target": 85.0})
    for label, row in ((f"{vit} b32", best), ("short texts", f"clipforge {low}")):
        if row in pick:
            out.append({"goal": f"{label}: {row} cos min vs fp32", "value": pick[row]["cos min vs fp32"],
                        "target": 0.999})  # fmt: skip
    ours_b1 = min((r["img b1 ms"], r["row"]) for r in rows if r["arch"] == vit and r["row"].startswith("clipforge"))
    peers_b1 = min((r["img b1 ms"], r["row"]) for r in rows if r["arch"] == vit and not r["row"].startswith("clipforge"))
    out.append({"goal": f"{vit} b1 ms: {ours_b1[1]} vs best peer {peers_b1[1]}", "value": ours_b1[0],
                "target": peers_b1[0]})  # fmt: skip
    for r in out:
        r["met"] = r["value"] is not None and (r["value"] <= r["target"] if "ms" in r["goal"] else r["value"] >= r["target"])
    return out


if __name__ == "__main__":
    main()
