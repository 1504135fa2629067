#!/usr/bin/env python3
"""Times one UNet forward in PyTorch eager: the peer of `unetlab bench` in `cargo xtask peer-bench`.

The network is either a diffusers UNet2DConditionModel built from its config.json (`--diffusers`,
written by `unetlab convert --to-diffusers`), or unetlab's own PyTorch build of any config
(`--explicit`, the self-contained YAML of `unetlab convert --explicit`, built by the modules of
`peer_proxy.py`, which `peer-bench` checks against unetlab). Weights are random (latency does
not depend on their values); fp32, batch 1, `torch.inference_mode`, `torch.set_num_threads`.
Writes a JSON report: parameter count, every timed run, median, p10, p90.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def build(args):
    """The network, with the sizes of its inputs: (model, in_channels, text_dim, addition)."""
    if args.diffusers:
        from diffusers import UNet2DConditionModel

        config = json.loads(Path(args.diffusers).read_text())
        if config.get("addition_embed_type"):
            raise SystemExit("--diffusers: UNets with added conditioning (SDXL) are not timed here")
        model = UNet2DConditionModel.from_config(config)
        return model, config["in_channels"], config["cross_attention_dim"], None, "diffusers"
    sys.path.insert(0, str(Path(__file__).parent))
    from peer_proxy import UNet

    u = yaml.safe_load(Path(args.explicit).read_text())["unet"]
    return UNet(u), u["in_channels"], u["text"]["dim"], u.get("addition"), "unetlab-pytorch"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--diffusers", help="a diffusers UNet2DConditionModel config.json")
    source.add_argument("--explicit", help="a unetlab config as self-contained YAML")
    parser.add_argument("--latent", type=int, default=64, help="latent height = width (default 64)")
    parser.add_argument("--tokens", type=int, default=77, help="text tokens (default 77)")
    parser.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    parser.add_argument("--runs", type=int, default=3, help="timed forwards (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards first (default 1)")
    parser.add_argument("--json", required=True, help="where to write the report")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, channels, text_dim, addition, kind = build(args)
    model = model.eval()
    sample = torch.randn(1, channels, args.latent, args.latent)
    timestep = torch.tensor([500.0])
    context = torch.randn(1, args.tokens, text_dim)
    extra = {}
    if addition:
        embeds = torch.randn(1, addition["text_embeds_dim"])
        ids = torch.tensor([[8.0 * args.latent] * addition["time_ids"]])
        extra = {"text_embeds": embeds, "time_ids": ids}

    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.runs):
            began = time.perf_counter()
            out = model(sample, timestep, context, **extra)
            elapsed = time.perf_counter() - began
            if i >= args.warmup:
                times.append(elapsed)
    out = out.sample if hasattr(out, "sample") else out
    if not torch.isfinite(out).all():
        raise RuntimeError("the forward produced non-finite values")
    pct = lambda q: float(np.percentile(times, q))
    report = {
        "kind": kind, "source": args.diffusers or args.explicit, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "latent": args.latent, "tokens": args.tokens,
        "params": sum(p.numel() for p in model.parameters()), "warmup": args.warmup,
        "times_s": times, "median_s": pct(50), "p10_s": pct(10), "p90_s": pct(90),
    }
    if kind == "diffusers":
        import diffusers

        report["diffusers"] = diffusers.__version__
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "times_s"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
