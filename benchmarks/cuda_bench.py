"""Training and inference throughput of the generator on a CUDA GPU (not a test).

    python benchmarks/cuda_bench.py [--parts peak,train,data,infer,compile,ort] [--json FILE]

- peak: the GPU's measured ceilings (an 8192^3 bf16 and a TF32 matrix product), the
  reference for "share of peak" below;
- train: SRResNet steps (batch 64) and SRGAN steps (batch 32, MSE + 1e-3 adversarial) on
  whole 64x64 -> 256x256 images through training/steps.py, fp32 (TF32 convolutions, the
  PyTorch default) vs bf16 autocast, NCHW vs channels_last. Random images already on the
  GPU: this is the model's own ceiling;
- data: what feeds those steps: the file DataLoader (JPEG decode + bicubic degradation in
  worker processes) vs the preloaded GPU tensors (--preload), in samples/s;
- infer: generator inference at 64x64 LR, images/s and TFLOP/s for batch 1..256 in fp32,
  fp32 channels_last, bf16 and fp16 (channels_last), with their error against fp32;
- compile: the same through torch.compile for the best eager configuration;
- ort: what srdeploy deploys: ONNX Runtime's CUDA provider on model.onnx and its fp16
  conversion, numpy in and out (onnxruntime-gpu: tools/wheel_parts.py carries it).

FLOPs are counted from the convolutions (2 x MACs; BN is folded at export, PReLU and
PixelShuffle are memory-bound and not counted). A training step is counted as ~3x the
forward FLOPs of every network it trains (2x for D in the generator's adversarial term).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from srdeploy.training.config import TrainConfig
from srdeploy.training.models import Discriminator, Generator
from srdeploy.training.steps import StepContext, srgan_step, srresnet_step

REPO = Path(__file__).resolve().parents[1]


def conv_flops(model: torch.nn.Module, *shape: int) -> float:
    """Forward FLOPs (2 x multiply-adds) of every Conv2d/Linear for one input of ``shape``."""
    total = 0.0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += 2.0 * k * out.numel()
        elif isinstance(mod, torch.nn.Linear):
            total += 2.0 * mod.in_features * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def cuda_time(fn, warmup: int, iters: int) -> float:
    """Median seconds per call, by CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def peak() -> dict:
    n = 8192
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    bf16 = 2 * n**3 / cuda_time(lambda: a @ b, 3, 10) / 1e12
    a32, b32 = a.float(), b.float()
    torch.backends.cuda.matmul.allow_tf32 = True
    tf32 = 2 * n**3 / cuda_time(lambda: a32 @ b32, 3, 10) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    return {"gpu": torch.cuda.get_device_name(), "bf16_matmul_tflops": round(bf16, 1), "tf32_matmul_tflops": round(tf32, 1)}


def train_rows(args) -> list[dict]:
    g_flops = conv_flops(Generator(), 3, 64, 64)
    d_flops = conv_flops(Discriminator(), 3, 256, 256)
    rows = []
    for stage, batch in (("srresnet", 64), ("srgan", 32)):
        for amp in (None, torch.bfloat16):
            for layout in (torch.contiguous_format, torch.channels_last):
                torch.manual_seed(0)
                g = Generator().cuda().to(memory_format=layout)
                d = Discriminator().cuda().to(memory_format=layout) if stage == "srgan" else None
                cfg = TrainConfig(data="x", stage=stage)
                ctx = StepContext(cfg, g, torch.optim.Adam(g.parameters(), 2e-4), d,
                                  torch.optim.Adam(d.parameters(), 2e-4) if d is not None else None, None, None, amp)
                lr = torch.rand(batch, 3, 64, 64, device="cuda").to(memory_format=layout)
                hr = (torch.rand(batch, 3, 256, 256, device="cuda") * 2 - 1).to(memory_format=layout)
                step = srgan_step if stage == "srgan" else srresnet_step
                sec = cuda_time(functools.partial(step, ctx, lr, hr), args.warmup, args.iters)
                # G forward + backward (~3x forward); SRGAN adds D forward + backward on real and
                # fake (3x each) and D forward + input-gradient backward for G's loss (2x).
                flops = 3 * g_flops + (8 * d_flops if stage == "srgan" else 0)
                rows.append({"stage": stage, "batch": batch, "precision": "bf16" if amp else "fp32 (tf32 conv)",
                             "layout": "channels_last" if layout == torch.channels_last else "nchw",
                             "steps_per_s": round(1 / sec, 2), "samples_per_s": round(batch / sec, 1),
                             "tflops": round(flops * batch / sec / 1e12, 1)})
                print(rows[-1], flush=True)
                del g, d, ctx
                torch.cuda.empty_cache()
    return rows


def data_rows(args) -> list[dict]:
    from torch.utils.data import DataLoader

    from srdeploy.training.data import EpochSampler, PreloadedLoader, PreloadedPairs, SRDataset

    if not args.data.is_dir():
        return [{"loader": f"skipped: {args.data} is absent"}]
    dataset = SRDataset(args.data, limit=args.data_limit)
    rows = []
    for workers in args.workers:
        sampler = EpochSampler(len(dataset))
        loader = DataLoader(dataset, batch_size=64, sampler=sampler, num_workers=workers, drop_last=True,
                            pin_memory=True, prefetch_factor=4, persistent_workers=False)
        t0, n = time.perf_counter(), 0
        for lr, hr in loader:
            lr.cuda(non_blocking=True), hr.cuda(non_blocking=True)
            n += lr.shape[0]
        torch.cuda.synchronize()
        rows.append({"loader": f"files, {workers} workers", "samples_per_s": round(n / (time.perf_counter() - t0), 1)})
        print(rows[-1], flush=True)
    t0 = time.perf_counter()
    pairs = PreloadedPairs(dataset, torch.device("cuda"))
    load_s = time.perf_counter() - t0
    loader = PreloadedLoader(pairs, EpochSampler(len(pairs)), 64)
    for lr, hr in loader:  # warm-up
        pass
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    for lr, hr in loader:
        n += lr.shape[0]
    torch.cuda.synchronize()
    rows.append({"loader": "preloaded on the GPU", "samples_per_s": round(n / (time.perf_counter() - t0), 1),
                 "preload_seconds": round(load_s, 1), "images": len(pairs)})
    print(rows[-1], flush=True)
    return rows


def infer_rows(args, compiled: bool = False) -> list[dict]:
    torch.manual_seed(0)
    base = Generator().eval()
    if (REPO / "srdeploy/models/srresnet/generator.pt").is_file():  # trained weights: realistic error figures
        base.load_state_dict(torch.load(REPO / "srdeploy/models/srresnet/generator.pt", weights_only=True))
    flops = conv_flops(base, 3, 64, 64)
    configs = [("fp32", torch.contiguous_format, None), ("fp32", torch.channels_last, None),
               ("bf16", torch.channels_last, torch.bfloat16), ("fp16", torch.channels_last, torch.float16)]
    if compiled:
        configs = [c for c in configs if c[0] in ("fp16", "bf16")]
    rows = []
    for name, layout, dtype in configs:
        model = base.to("cuda", memory_format=layout)
        if dtype is not None:
            model = Generator().eval().cuda()
            model.load_state_dict(base.state_dict())
            model = model.to(dtype=dtype, memory_format=layout)
        run = torch.compile(model) if compiled else model
        for batch in args.batches if not compiled else [max(args.batches)]:
            x = torch.rand(batch, 3, 64, 64, device="cuda").to(memory_format=layout)
            with torch.inference_mode():
                ref = base.to("cuda", memory_format=torch.contiguous_format)(x.contiguous()).float()
                xin = x.to(dtype) if dtype is not None else x
                out = run(xin).float()
                sec = cuda_time(lambda: run(xin), args.warmup, args.iters)
            err = (out - ref).abs().max().item() / 2  # [-1, 1] -> [0, 1] scale
            mse = F.mse_loss((out + 1) / 2, (ref + 1) / 2).item()
            rows.append({"precision": name, "layout": "channels_last" if layout == torch.channels_last else "nchw",
                         "compiled": compiled, "batch": batch, "images_per_s": round(batch / sec, 1),
                         "output_mpx_per_s": round(batch * 256 * 256 / sec / 1e6, 1),
                         "tflops": round(flops * batch / sec / 1e12, 1), "max_abs_err_vs_fp32": float(f"{err:.2e}"),
                         "psnr_vs_fp32_db": round(10 * torch.log10(torch.tensor(1 / max(mse, 1e-20))).item(), 1)})
            print(rows[-1], flush=True)
    return rows


def ort_rows(args, provider: str = "cuda", device: str = "cuda") -> list[dict]:
    """ONNX Runtime's CUDA provider on the shipped model.onnx and its fp16 conversion, opened
    as the Upscaler opens them (srdeploy.runtime.providers), numpy in and out, copies
    included; errors against the PyTorch generator in fp32 without TF32. ``provider`` and
    ``device`` let the CPU rehearse it."""
    import tempfile

    import numpy as np

    from srdeploy.export.fp16 import convert_fp16
    from srdeploy.runtime import contract
    from srdeploy.runtime.providers import open_session

    model = REPO / "srdeploy/models/srresnet/model.onnx"
    base = Generator().eval().to(device)
    base.load_state_dict(torch.load(REPO / "srdeploy/models/srresnet/generator.pt", weights_only=True))
    flops = conv_flops(base, 3, 64, 64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("fp32", model), ("fp16", convert_fp16(model, Path(tmp) / "model.fp16.onnx"))):
            session = open_session(path, provider, 1, 64)
            for batch in args.batches:
                x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
                feed = {contract.INPUT_NAME: x.numpy()}
                tf32, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
                with torch.inference_mode():
                    ref = ((base(x.to(device)) + 1) / 2).float().cpu().numpy()  # the contract's [0, 1] output
                torch.backends.cudnn.allow_tf32 = tf32
                out = session.run(None, feed)[0]
                for _ in range(args.warmup):
                    session.run(None, feed)
                start = time.perf_counter()
                for _ in range(args.iters):
                    session.run(None, feed)
                sec = (time.perf_counter() - start) / args.iters
                mse = float(np.mean((out.astype(np.float64) - ref) ** 2))
                rows.append({"engine": f"onnxruntime {provider}", "precision": name, "batch": batch, "images_per_s": round(batch / sec, 1),
                             "tflops": round(flops * batch / sec / 1e12, 2), "max_abs_err_vs_torch_fp32": float(f"{np.abs(out - ref).max():.2e}"),
                             "psnr_vs_torch_fp32_db": round(float(10 * np.log10(1 / max(mse, 1e-20))), 1)})
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="peak,train,data,infer")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/celeba_hq_256/train")
    ap.add_argument("--data-limit", type=int, default=2048)
    ap.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8])
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 256])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_bench: torch sees no CUDA device")
    parts = args.parts.split(",")
    result = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    torch.backends.cudnn.benchmark = True
    runners = {"peak": peak, "train": lambda: train_rows(args), "data": lambda: data_rows(args),
               "infer": lambda: infer_rows(args), "compile": lambda: infer_rows(args, compiled=True), "ort": lambda: ort_rows(args)}
    for part in parts:
        t0 = time.perf_counter()
        try:
            result[part] = runners[part]()
        except Exception as e:  # one failing part must not lose the others' numbers
            result[part] = {"error": f"{type(e).__name__}: {e}"}
        print(f"== {part}: {time.perf_counter() - t0:.1f} s", flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    if not args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
