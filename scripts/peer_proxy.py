#!/usr/bin/env python3
"""PyTorch peer of unetlab's proxy network and training step (eager, fp32, CPU).

The network is rebuilt from a `unetlab train` run directory: `proxy.yaml` (the proxy UNet as
explicit unetlab YAML, every option resolved per stage), `run.json` (the recipe and the text
encoder's size) and `checkpoint.safetensors` (`model.*`, `ema.*`, `adam_m.*`, `adam_v.*`, each
over the `unet.*`/`text.*` names). It mirrors `crates/graph` (unet.rs, blocks.rs, text.rs) with
ordinary torch modules under diffusers' names, and the step mirrors `crates/train` (trainer.rs
`denoising_loss`, optim.rs, schedule.rs, model.rs).

  check  verifies names, shapes and counts against the checkpoint and run.json, the UNet forward
         against `unetlab forward`, and the text encoder (and EMA UNet) against the test vector of
         a bundle written by `unetlab export --run`.
  bench  times training steps: random latents and tokens, the DDPM loss on SD's schedule,
         backward, gradient clipping, AdamW with the recipe's settings, EMA of every weight.
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

TOLERANCE = 1e-4
TRANSFORMER_GROUP_NORM_EPS = 1e-6  # fixed in diffusers' Transformer2DModel
LAYER_NORM_EPS = 1e-5
TRAIN_STEPS = 1000


def conv3x3(cin, cout, kind):
    """A res block's 3x3 conv: dense (`regular`), or `separable`: depthwise 3x3 without bias,
    then pointwise 1x1."""
    if kind == "regular":
        return nn.Conv2d(cin, cout, 3, padding=1)
    return nn.Sequential(OrderedDict(
        depthwise=nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
        pointwise=nn.Conv2d(cin, cout, 1)))


class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D (default time-scale-shift, output scale 1)."""

    def __init__(self, cin, cout, temb, kind, groups, eps):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps)
        self.conv1 = conv3x3(cin, cout, kind)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps)
        self.conv2 = conv3x3(cout, cout, kind)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """diffusers' Attention; shared K/V uses `to_k` as values (no `to_v`); ReLU attention is
    relu(QKᵀ/√d) / N_keys."""

    def __init__(self, dim, context_dim, t):
        super().__init__()
        self.heads, self.kernel = t["heads"], t["kernel"]
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = None if t["shared_kv"] else nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x, context=None):
        ctx = x if context is None else context
        b, n, dim = x.shape
        split = lambda y: y.view(b, -1, self.heads, dim // self.heads).transpose(1, 2)
        q, k = split(self.to_q(x)), split(self.to_k(ctx))
        v = k if self.to_v is None else split(self.to_v(ctx))
        if self.kernel == "softmax":
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            scale = 1.0 / math.sqrt(dim // self.heads) / k.shape[2]
            o = F.relu((q * scale) @ k.transpose(-1, -2)) @ v
        return self.to_out[0](o.transpose(1, 2).reshape(b, n, dim))


class GatedProj(nn.Module):
    """GEGLU (exact-erf GELU gate) or SwiGLU: hidden ⊙ act(gate) of one projection."""

    def __init__(self, dim, inner, activation):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)
        self.act = F.gelu if activation == "gelu" else F.silu

    def forward(self, x):
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * self.act(gate)


class FeedForward(nn.Module):
    """`ff.net.0.proj` → gate → `ff.net.2` (net.1 is diffusers' dropout slot)."""

    def __init__(self, dim, t):
        super().__init__()
        inner = int(dim * t["mult"])
        self.net = nn.Sequential(GatedProj(dim, inner, t["activation"]), nn.Identity(),
                                 nn.Linear(inner, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention (norm1/attn1), cross-attention (norm2/attn2) and feed-forward
    (norm3/ff); either attention may be absent."""

    def __init__(self, dim, context_dim, t):
        super().__init__()
        if t["self"]:
            self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
            self.attn1 = Attention(dim, dim, t)
        if t["cross"]:
            self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
            self.attn2 = Attention(dim, context_dim, t)
        self.norm3 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ff = FeedForward(dim, t)

    def forward(self, x, context):
        if hasattr(self, "attn1"):
            x = x + self.attn1(self.norm1(x))
        if hasattr(self, "attn2"):
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """GroupNorm, proj_in (1x1 conv or linear), transformer blocks, proj_out, residual."""

    def __init__(self, c, context_dim, t, depth, groups, proj):
        super().__init__()
        self.linear = proj == "linear"
        self.norm = nn.GroupNorm(groups, c, TRANSFORMER_GROUP_NORM_EPS)
        make = (lambda: nn.Linear(c, c)) if self.linear else (lambda: nn.Conv2d(c, c, 1))
        self.proj_in = make()
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(c, context_dim, t) for _ in range(depth)])
        self.proj_out = make()

    def forward(self, x, context):
        b, c, h, w = x.shape
        y = self.norm(x)
        to_tokens = lambda y: y.permute(0, 2, 3, 1).reshape(b, h * w, c)
        y = self.proj_in(to_tokens(y)) if self.linear else to_tokens(self.proj_in(y))
        for block in self.transformer_blocks:
            y = block(y, context)
        to_image = lambda y: y.reshape(b, h, w, c).permute(0, 3, 1, 2)
        y = to_image(self.proj_out(y)) if self.linear else self.proj_out(to_image(y))
        return y + x


def sinusoidal(x, channels, flip, shift):
    """diffusers' Timesteps, in unetlab's float32 arithmetic: `[..]` → `[.., channels]`."""
    half = channels // 2
    i = np.arange(half, dtype=np.float32)
    freqs = np.exp(np.float32(-math.log(10000.0)) * i / np.float32(half - shift))
    args = x.float()[..., None] * torch.from_numpy(freqs)
    sin, cos = torch.sin(args), torch.cos(args)
    return torch.cat([cos, sin] if flip else [sin, cos], dim=-1)


def timestep_embedding(cin, dim):
    """diffusers' TimestepEmbedding: linear_2(silu(linear_1(x)))."""
    return nn.Sequential(OrderedDict(
        linear_1=nn.Linear(cin, dim), act=nn.SiLU(), linear_2=nn.Linear(dim, dim)))


class Resample(nn.Module):
    """`downsamplers.0.conv` (3x3, stride 2) or `upsamplers.0.conv` (nearest 2x, then 3x3)."""

    def __init__(self, c, up):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(c, c, 3, stride=1 if up else 2, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest") if self.up else x)


class UNetBlock(nn.Module):
    """A down, mid or up block: `resnets.j`, `attentions.j` where the depth is positive (under
    its slot's index), and `downsamplers.0`/`upsamplers.0` when given."""

    def __init__(self, resnets, attentions, resample=None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleDict({str(j): a for j, a in attentions.items()})
        if resample is not None:
            name = "upsamplers" if resample.up else "downsamplers"
            setattr(self, name, nn.ModuleList([resample]))

    def attend(self, j, x, context):
        """`attentions.j` if it exists."""
        return self.attentions[str(j)](x, context) if str(j) in self.attentions else x


class UNet(nn.Module):
    """unetlab's `unet_forward` (diffusers' UNet2DConditionModel, generalised): conv_in, down
    blocks, mid block, up blocks, conv_norm_out, conv_out. Skips: conv_in, every down res block
    (after its transformers) and every downsampler push; each level's first `down.res_blocks + 1`
    up res blocks concatenate the most recent unused one."""

    def __init__(self, u):
        super().__init__()
        self.u = u
        groups, eps, t = u["norm"]["groups"], float(u["norm"]["eps"]), u["time"]
        def res(cin, cout, kind):
            return ResnetBlock2D(cin, cout, t["dim"], kind, groups, eps)

        def block(stage, c, resnets, resample=None):
            a, f = stage["attention"], stage["feed_forward"]
            tr = {**a, "heads": a.get("heads", 0), "mult": float(f["mult"]),
                  "activation": f["activation"]}
            attentions = {j: Transformer2DModel(c, u["text"]["dim"], tr, d, groups, u["proj"])
                          for j, d in enumerate(stage["transformer_depth"]) if d > 0}
            return UNetBlock(resnets, attentions, resample)

        self.time_embedding = timestep_embedding(t["channels"], t["dim"])
        if add := u.get("addition"):
            self.add_embedding = timestep_embedding(
                add["text_embeds_dim"] + add["time_ids"] * add["time_channels"], t["dim"])
        levels = u["levels"]
        c = levels[0]["channels"]
        self.conv_in = nn.Conv2d(u["in_channels"], c, 3, padding=1)
        skips, self.down_blocks = [c], nn.ModuleList()
        for i, level in enumerate(levels):
            lc, down, last = level["channels"], level["down"], i == len(levels) - 1
            n = len(down["transformer_depth"])  # one depth per res block
            resnets = [res(c if j == 0 else lc, lc, level["conv"]) for j in range(n)]
            c = lc if n else c
            skips += [c] * (n + (not last))
            self.down_blocks.append(block(down, c, resnets, None if last else Resample(c, up=False)))
        mid = u["mid"]
        n = len(mid["transformer_depth"]) + 1  # one depth per pair of res blocks
        self.mid_block = block(mid, c, [res(c, c, mid["conv"]) for _ in range(n)])
        self.up_blocks = nn.ModuleList()
        for l in reversed(range(len(levels))):
            level, resnets = levels[l], []
            lc, up = level["channels"], level["up"]
            for j in range(len(up["transformer_depth"])):
                skip = skips.pop() if j < level["down"]["res_blocks"] + 1 else 0
                resnets.append(res(c + skip, lc, level["conv"]))
                c = lc
            self.up_blocks.append(block(up, c, resnets, Resample(c, up=True) if l > 0 else None))
        self.conv_norm_out = nn.GroupNorm(groups, c, eps)
        self.conv_out = nn.Conv2d(c, u["out_channels"], 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        """Predicted noise (or v) `[B, out_channels, S, S]`."""
        t, ctx = self.u["time"], encoder_hidden_states
        emb_args = (t["flip_sin_to_cos"], float(t["freq_shift"]))
        emb = self.time_embedding(sinusoidal(timestep, t["channels"], *emb_args))
        if add := self.u.get("addition"):
            ids = sinusoidal(time_ids, add["time_channels"], *emb_args).flatten(1)
            emb = emb + self.add_embedding(torch.cat([text_embeds, ids], dim=1))
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            for j, resnet in enumerate(block.resnets):
                x = block.attend(j, resnet(x, emb), ctx)
                skips.append(x)
            if hasattr(block, "downsamplers"):
                x = block.downsamplers[0](x)
                skips.append(x)
        mid = self.mid_block
        x = mid.resnets[0](x, emb)
        for k, resnet in enumerate(mid.resnets[1:]):
            x = resnet(mid.attend(k, x, ctx), emb)
        for block, level in zip(self.up_blocks, reversed(self.u["levels"])):
            for j, resnet in enumerate(block.resnets):
                if j < level["down"]["res_blocks"] + 1:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block.attend(j, resnet(x, emb), ctx)
            if hasattr(block, "upsamplers"):
                x = block.upsamplers[0](x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class TextEncoder(nn.Module):
    """unetlab's proxy text encoder: one-hot tokens through a linear embedding, learned positions,
    pre-norm self-attention layers (GEGLU, mult 4), final LayerNorm; pooled = first position."""

    def __init__(self, vocab, tokens, width, layers, heads):
        super().__init__()
        block = {"self": True, "cross": False, "shared_kv": False, "kernel": "softmax",
                 "heads": heads, "mult": 4.0, "activation": "gelu"}
        self.token_embedding = nn.Linear(vocab, width, bias=False)
        self.position_embedding = nn.Parameter(torch.zeros(tokens, width))
        self.layers = nn.ModuleList(
            [BasicTransformerBlock(width, width, block) for _ in range(layers)])
        self.final_layer_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def forward(self, one_hot):
        """Hidden states `[B, tokens, width]` and pooled embedding `[B, width]`."""
        x = self.token_embedding(one_hot) + self.position_embedding
        for layer in self.layers:
            x = layer(x, x)
        hidden = self.final_layer_norm(x)
        return hidden, hidden[:, 0]


def size_conditioning(batch, time_ids, side):
    """unetlab's `size_conditioning`: original and target size = `side`, crop 0 (flat index % 6)."""
    ids = [0.0 if (i % 6) // 2 == 1 else side for i in range(batch * time_ids)]
    return torch.tensor(ids, dtype=torch.float32).view(batch, time_ids)


class ProxyModel(nn.Module):
    """The trained pair under one namespace (`unet.*`, `text.*`), as unetlab's ProxyModel."""

    def __init__(self, run):
        super().__init__()
        self.spec = yaml.safe_load((run / "proxy.yaml").read_text())["unet"]
        summary = json.loads((run / "run.json").read_text())
        self.recipe, self.summary = summary["recipe"], summary
        p = self.recipe["proxy"]
        self.unet = UNet(self.spec)
        self.text = TextEncoder(summary["vocab"], p["tokens"], p["text_dim"],
                                self.recipe["text_layers"], self.recipe["text_heads"])

    def forward(self, x_t, t, one_hot):
        hidden, pooled = self.text(one_hot)
        extra = {}
        if self.spec.get("addition"):
            side = float(2 * self.spec["latent_size"])
            ids = size_conditioning(x_t.shape[0], self.spec["addition"]["time_ids"], side)
            extra = {"text_embeds": pooled, "time_ids": ids}
        return self.unet(x_t, t, hidden, **extra)


def part(tensors, prefix):
    """The tensors under `prefix`, with it stripped."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def max_diff(a, b):
    return float((a.float() - b.float()).abs().max())


def compare_names(module, weights, prefix):
    """Names/shapes of `module`'s parameters against the checkpoint's `prefix` tensors."""
    ours = {k: tuple(v.shape) for k, v in module.named_parameters()}
    theirs = {k: tuple(v.shape) for k, v in part(weights, prefix).items()}
    return {
        "params": sum(math.prod(s) for s in ours.values()),
        "tensors": len(ours),
        "missing_in_torch": sorted(theirs.keys() - ours.keys()),
        "not_in_checkpoint": sorted(ours.keys() - theirs.keys()),
        "shape_mismatches": sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k]),
    }


def run_unetlab(unetlab, *args):
    subprocess.run([unetlab, *args], check=True, stdout=subprocess.DEVNULL)


@torch.no_grad()
def check(args):
    """Names, shapes, counts and outputs against unetlab; exits 1 on any mismatch."""
    torch.manual_seed(0)
    run = Path(args.run)
    model = ProxyModel(run).eval()
    ck = load_file(str(run / "checkpoint.safetensors"))
    weights = part(ck, "model.")
    report = {"run": str(run), "config": model.summary["config"], "torch": torch.__version__}
    problems = []
    for name, module, expected in [("unet", model.unet, model.summary["proxy_params"]),
                                   ("text", model.text, model.summary["text_encoder_params"])]:
        r = compare_names(module, weights, name + ".")
        r["params_run_json"] = expected
        report[name] = r
        if any(r[k] for k in ("missing_in_torch", "not_in_checkpoint", "shape_mismatches")) \
                or r["params"] != expected:
            problems.append(f"{name}: names, shapes or parameter count differ")
    if problems:
        return finish(report, problems, args.json)
    model.load_state_dict(weights, strict=True)

    u, batch = model.spec, 2
    inputs = {
        "sample": torch.randn(batch, u["in_channels"], u["latent_size"], u["latent_size"]),
        "timestep": torch.tensor([17.0, 981.0]),
        "encoder_hidden_states": torch.randn(batch, u["text"]["tokens"], u["text"]["dim"]),
    }
    if u.get("addition"):
        inputs["text_embeds"] = torch.randn(batch, u["addition"]["text_embeds_dim"])
        inputs["time_ids"] = size_conditioning(batch, u["addition"]["time_ids"],
                                               2.0 * u["latent_size"])
    with tempfile.TemporaryDirectory(prefix="peer-check-") as tmp:
        tmp = Path(tmp)
        save_file(part(weights, "unet."), str(tmp / "unet.safetensors"))
        save_file(inputs, str(tmp / "inputs.safetensors"))
        run_unetlab(args.unetlab, "forward", "--config", str(run / "proxy.yaml"),
                    "--weights", str(tmp / "unet.safetensors"), "--inputs",
                    str(tmp / "inputs.safetensors"), "--output", str(tmp / "out.safetensors"))
        report["unet_forward_max_abs_diff"] = max_diff(
            model.unet(**inputs), load_file(str(tmp / "out.safetensors"))["output"])
        # The bundle of `export --run` holds the EMA weights and a test vector of both networks.
        run_unetlab(args.unetlab, "export", "--run", str(run), "--out", str(tmp / "bundle"),
                    "--bench-runs", "0")
        io = load_file(str(tmp / "bundle" / "example_io.safetensors"))
    model.load_state_dict(part(ck, "ema."), strict=True)
    hidden, pooled = model.text(io["text.tokens_one_hot"])
    report["text_hidden_max_abs_diff"] = max_diff(hidden, io["text.hidden_states"])
    report["text_pooled_max_abs_diff"] = max_diff(pooled, io["text.pooled"])
    bundle_inputs = {k: v for k, v in io.items() if k in inputs}
    report["ema_unet_bundle_max_abs_diff"] = max_diff(model.unet(**bundle_inputs), io["output"])
    for key in ["unet_forward_max_abs_diff", "text_hidden_max_abs_diff",
                "text_pooled_max_abs_diff", "ema_unet_bundle_max_abs_diff"]:
        if not report[key] <= TOLERANCE:
            problems.append(f"{key} = {report[key]:.3e} > {TOLERANCE}")
    return finish(report, problems, args.json)


def finish(report, problems, path):
    """Writes the report with its verdict, prints a summary; the exit status."""
    report["tolerance"], report["problems"], report["ok"] = TOLERANCE, problems, not problems
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k.endswith("diff")}
    for name in ("unet", "text"):
        summary[f"{name}_params"] = report[name]["params"]
    print(json.dumps(summary, indent=2))
    for p in problems:
        print("MISMATCH:", p, file=sys.stderr)
    return 0 if report["ok"] else 1


def alphas_cumprod():
    """ᾱ of SD's scaled-linear schedule: √β linear from √0.00085 to √0.012 over 1000 steps."""
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), TRAIN_STEPS, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def learning_rate(step, warmup, total, peak):
    """unetlab's linear warm-up, then cosine decay to 10 % of the peak at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.1 * peak + 0.9 * peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def bench(args):
    """Times `--steps` training steps after `--warmup` untimed ones; writes the JSON report."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ProxyModel(Path(args.run)).train()
    model.load_state_dict(part(load_file(str(Path(args.run) / "checkpoint.safetensors")), "model."))
    r, u = model.recipe, model.spec
    o = r["optimizer"]
    params = [p for _, p in sorted(model.named_parameters())]  # unetlab's order: text.*, unet.*
    opt = torch.optim.AdamW(params, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                            weight_decay=o["weight_decay"])
    ema = [p.detach().clone() for p in params]
    sqrt_a = torch.from_numpy(np.sqrt(alphas_cumprod())).float()
    sqrt_1ma = torch.from_numpy(np.sqrt(1.0 - alphas_cumprod())).float()
    n, shape = args.batch, (u["in_channels"], u["latent_size"], u["latent_size"])
    vocab, tokens = model.summary["vocab"], r["proxy"]["tokens"]
    total = args.warmup + args.steps

    def step(s):
        x0 = torch.rand(n, *shape) * 2 - 1  # stand-in for pixel-unshuffled images in [-1, 1]
        one_hot = F.one_hot(torch.randint(0, vocab, (n, tokens)), vocab).float()
        t = torch.randint(0, TRAIN_STEPS, (n,))
        noise = torch.randn_like(x0)
        signal, spread = sqrt_a[t].view(n, 1, 1, 1), sqrt_1ma[t].view(n, 1, 1, 1)
        x_t = x0 * signal + noise * spread
        target = noise * signal - x0 * spread if r["prediction"] == "v" else noise
        loss = F.mse_loss(model(x_t, t.float(), one_hot), target)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"step {s}: loss {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r["grad_clip"], error_if_nonfinite=True)
        for group in opt.param_groups:
            group["lr"] = learning_rate(s, r["warmup"], total, o["lr"])
        opt.step()
        decay = min(r["ema_decay"], (1.0 + s) / (10.0 + s))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p, 1.0 - decay)

    times = []
    for s in range(total):
        began = time.perf_counter()
        step(s)
        if s >= args.warmup:
            times.append(time.perf_counter() - began)
    pct = lambda q: float(np.percentile(times, q))
    report = {
        "run": args.run, "config": model.summary["config"], "torch": torch.__version__,
        "threads": torch.get_num_threads(), "batch": n, "warmup": args.warmup,
        "params": sum(p.numel() for p in params), "prediction": r["prediction"],
        "times_s": times, "median_s": pct(50), "p10_s": pct(10), "p90_s": pct(90),
        "steps_per_s": len(times) / sum(times), "images_per_s": n * len(times) / sum(times),
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "times_s"}, indent=2))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="verify the PyTorch network against unetlab")
    c.add_argument("--run", required=True, help="a `unetlab train` run directory")
    c.add_argument("--json", required=True, help="where to write the report")
    c.add_argument("--unetlab", default="unetlab", help="the unetlab binary (default: on PATH)")
    b = sub.add_parser("bench", help="time PyTorch eager training steps")
    b.add_argument("--run", required=True, help="a `unetlab train` run directory")
    b.add_argument("--batch", type=int, required=True, help="images per step")
    b.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    b.add_argument("--steps", type=int, required=True, help="timed steps")
    b.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    b.add_argument("--json", required=True, help="where to write the report")
    args = parser.parse_args()
    sys.exit(check(args) if args.command == "check" else bench(args))


if __name__ == "__main__":
    main()
