#!/usr/bin/env python3
"""PyTorch's side of `handnet bench --pytorch`: the same training and
inference steps, written the way a user writes them by hand.

Usage: pytorch_bench.py --device cpu|cuda[:N] [--threads N] [--warmup W]
                        [--steps S] [--min-seconds T] CASE...
       pytorch_bench.py ... --stdin   (cases one per line on stdin, each
                        answered as it comes: handnet measures its side of
                        a row, then asks for PyTorch's, back to back)
A CASE is MODEL:BATCH:MODE:PHASE, e.g. cnn:16:fp32:train or
resnet18:256:bf16+cl:infer; PHASE predict classifies BATCH photo files from
--photos DIR end to end (PIL decode, torchvision Resize/ToTensor/Normalize,
forward, softmax, the answers). MODE is fp32, bf16 or fp16, with +cl for
channels_last (data modes such as +data run as plain: PyTorch's steps here
use one batch resident on the device, its best case). For each case one JSON
line goes to stdout:
  {"model", "batch", "mode", "phase", "device", "images_per_sec", "steps", "seconds", "torch"}

The models are handnet's: the study's CNN (StudyCNN below, with handnet
bench's dropout: 0.4 before fc1 and 0.4 before fc2) and torchvision's
ResNet-18 with an 8-class head. A training step is
forward, cross-entropy, backward and SGD (lr 0.0025, momentum 0.9); an
inference step is a forward pass in eval mode under torch.inference_mode.
Timing: warm-up steps, then steps until both --steps and --min-seconds are
reached; CUDA is synchronised before the clock is read. Both sides flush
denormal floats to zero (torch.set_flush_denormal): a training step run
again and again on one batch drives the model onto that batch within a
second, into numbers below fp32's normal range, whose arithmetic the CPU
runs far slower (this script's CNN at batch 1: 38 images/s in its first
half second, 4-20 after) - a figure would then depend on how many steps a
side had already made, the faster side's the more.
"""
import argparse
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

W, H, CLASSES = 170, 128, 8
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # handnet's vision.Mean, vision.Std


class StudyCNN(nn.Module):
    """The study's CNN, PyTorch's one definition of it: conv 5x5 16/32/64,
    each ReLU + max-pool 2 (features), then fc1 256, ReLU, fc2 (head) on
    170x128 input, logits out. flat_dropout and fc1_dropout are the dropout
    before fc1 and before fc2 in training mode (handnet's flat0.4-fc1-0.4
    is 0.4 and 0.4; 0 has none). The golden fixtures
    (tools/fixtures/golden.py) import it from here: this file is embedded in
    handnet and runs from a temporary folder, so it imports nothing of the
    repository's."""

    def __init__(self, classes=CLASSES, flat_dropout=0.0, fc1_dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.conv3 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * 12 * 17, 256)
        self.fc2 = nn.Linear(256, classes)
        self.flat_dropout, self.fc1_dropout = flat_dropout, fc1_dropout

    def features(self, x):
        """The last convolution block's activations (Grad-CAM's layer)."""
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return x

    def head(self, a):
        """Logits from features(x)."""
        x = torch.flatten(a, 1)
        if self.flat_dropout:
            x = F.dropout(x, self.flat_dropout, self.training)
        x = F.relu(self.fc1(x))
        if self.fc1_dropout:
            x = F.dropout(x, self.fc1_dropout, self.training)
        return self.fc2(x)

    def forward(self, x):
        return self.head(self.features(x))


def build(name):
    if name == "cnn":
        return StudyCNN(flat_dropout=0.4, fc1_dropout=0.4)  # handnet bench's model.FinalDropout
    if name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(num_classes=CLASSES)
    raise SystemExit(f"unknown model {name!r}")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case, device, args):
    model_name, batch, mode, phase = case.split(":")
    batch = int(batch)
    parts = mode.split("+")
    precision, cl = parts[0], "cl" in parts[1:]
    if precision not in ("fp32", "bf16", "fp16"):
        raise SystemExit(f"case {case}: precision {precision!r}")
    torch.manual_seed(0)
    model = build(model_name).to(device)
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, H, W, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = None
    if precision == "fp16":
        scaler = torch.cuda.amp.GradScaler()

    def autocast():
        if dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=dtype)

    if phase == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0025, momentum=0.9)

        def step():
            with autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=False)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
    elif phase == "predict":
        # What a user's script does to classify photo files: PIL decodes,
        # torchvision resizes and normalises, the model answers.
        import glob
        import os
        from PIL import Image
        import torchvision.transforms as T
        files = sorted(glob.glob(os.path.join(args.photos or "", "*.jpg")))
        if not files:
            raise SystemExit(f"case {case}: no JPEG photos in --photos {args.photos!r}")
        tf = T.Compose([T.Resize((H, W)), T.ToTensor(), T.Normalize(MEAN, STD)])
        model.eval()
        at = [0]

        def step():
            paths = [files[(at[0] + j) % len(files)] for j in range(batch)]
            at[0] += batch
            xs = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths]).to(device)
            xs = xs.contiguous(memory_format=fmt)
            with torch.inference_mode(), autocast():
                probs = model(xs).float().softmax(-1)
            best, idx = probs.max(-1)
            return list(zip(idx.tolist(), best.tolist()))
    elif phase == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                model(x).float()
    else:
        raise SystemExit(f"case {case}: phase {phase!r}")

    for _ in range(args.warmup):
        step()
    sync(device)
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if n >= args.steps:
            sync(device)
            el = time.perf_counter() - start
            if el >= args.min_seconds:
                break
    return {"model": model_name, "batch": batch, "mode": mode, "phase": phase, "device": str(device),
            "images_per_sec": n * batch / el, "steps": n, "seconds": el, "torch": torch.__version__}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--photos", default="", help="folder of JPEG photos for predict cases")
    p.add_argument("--stdin", action="store_true", help="read cases from stdin, one per line")
    p.add_argument("cases", nargs="*")
    args = p.parse_args()
    if not args.cases and not args.stdin:
        p.error("no cases: give CASE... or --stdin")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # As handnet's side: denormal floats flushed to zero (see the docstring).
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for case in args.cases:
        print(json.dumps(run_case(case, device, args)), flush=True)
    if args.stdin:
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(run_case(line.strip(), device, args)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
