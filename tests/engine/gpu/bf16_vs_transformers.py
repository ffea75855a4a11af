"""The CUDA engine in bfloat16 against Hugging Face transformers in bfloat16 on the same random
checkpoint, teacher-forced over many positions (run on the GPU machine).

transformers makes the model from CONFIG on the GPU (its own random init, seeded), writes it as a
safetensors checkpoint (its in-memory names: the engine reads transformers 5's fused expert
layout), and computes the logits of one random token sequence in bfloat16 and, after converting
the same weights to float32, in float32 (the reference). Then `tollgate-engine logits` computes the
engine's bfloat16 logits of the same sequence: the first --prefill positions in one prefill chunk,
every later one as a decode step on the paged latent cache (the absorbed-MLA path). Reported, for
the engine and for transformers' own bf16 against the float32 reference, and for the engine
against transformers bf16: teacher-forced top-1 agreement and the cosine of the logit vectors
(min, median), on the prefill and decode positions apart and together.

usage: bf16_vs_transformers.py CONFIG_JSON ENGINE_BINARY [--layers N] [--first-dense K]
         [--positions 512] [--prefill 256] [--work /dev/shm/tg-cmp] [--keep] [--json OUT]
"""
import argparse
import json
import os
import shutil
import subprocess
import time

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("config")
ap.add_argument("engine")
ap.add_argument("--layers", type=int)
ap.add_argument("--first-dense", type=int)
ap.add_argument("--positions", type=int, default=512)
ap.add_argument("--prefill", type=int, default=256)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--work", default="/dev/shm/tg-cmp")
ap.add_argument("--keep", action="store_true", help="keep the checkpoint folder (e.g. to serve it)")
ap.add_argument("--json")
a = ap.parse_args()

raw = json.load(open(a.config))
if a.layers:
    raw["num_hidden_layers"] = a.layers
if a.first_dense is not None:
    raw["first_k_dense_replace"] = a.first_dense
cfg = AutoConfig.for_model(**{k: v for k, v in raw.items() if k != "architectures"})
torch.manual_seed(a.seed)
t0 = time.time()
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
model.eval()
params = sum(p.numel() for p in model.parameters())
print(f"transformers {transformers.__version__}: {params / 1e9:.2f}B parameters made in {time.time() - t0:.1f} s",
      flush=True)

gen = torch.Generator(device="cuda").manual_seed(a.seed + 1)
ids = torch.randint(0, cfg.vocab_size, (1, a.positions), device="cuda", generator=gen)
with torch.no_grad():
    hf16 = model(ids).logits[0].float().cpu()

# The checkpoint, in shards of about 4 GB so that no more than one shard is on the host at once.
shutil.rmtree(a.work, ignore_errors=True)
os.makedirs(a.work)
t0 = time.time()
state = {n: t for n, t in model.state_dict().items() if "rotary_emb" not in n}
shards, cur, size = [], {}, 0
for n, t in state.items():
    cur[n] = t
    size += t.numel() * t.element_size()
    if size > 4e9:
        shards.append(cur)
        cur, size = {}, 0
if cur:
    shards.append(cur)
index = {"metadata": {}, "weight_map": {}}
for i, sh in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file({n: t.detach().contiguous().cpu() for n, t in sh.items()}, os.path.join(a.work, fname))
    for n in sh:
        index["weight_map"][n] = fname
json.dump(index, open(os.path.join(a.work, "model.safetensors.index.json"), "w"))
json.dump(raw, open(os.path.join(a.work, "config.json"), "w"), indent=1)
json.dump(ids[0].tolist(), open(os.path.join(a.work, "tokens.json"), "w"))
print(f"checkpoint written to {a.work} in {time.time() - t0:.1f} s ({len(shards)} shards)", flush=True)
del state, shards, cur

with torch.no_grad():
    model.float()
    ref = model(ids).logits[0].float().cpu()
del model
torch.cuda.empty_cache()

t0 = time.time()
out = os.path.join(a.work, "engine.f32")
subprocess.run([a.engine, "logits", "--checkpoint", a.work, "--tokens", os.path.join(a.work, "tokens.json"),
                "--out", out, "--device", "cuda:0", "--dtype", "bfloat16", "--prefill", str(a.prefill),
                "--kv-cache-memory", "2000000000"], check=True)
ours = torch.frombuffer(bytearray(open(out, "rb").read()), dtype=torch.float32).reshape(a.positions, -1)
print(f"engine logits in {time.time() - t0:.1f} s (load included)", flush=True)


def compare(x, y, rows):
    x, y = x[rows], y[rows]
    top1 = (x.argmax(-1) == y.argmax(-1)).float().mean().item()
    cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)
    return {"positions": len(rows), "top1_agreement": top1, "cosine_min": cos.min().item(),
            "cosine_median": cos.median().item()}


parts = {"all": list(range(a.positions)), "prefill": list(range(a.prefill)),
         "decode": list(range(a.prefill, a.positions))}
report = {"config": os.path.basename(a.config), "layers": raw["num_hidden_layers"],
          "first_k_dense_replace": raw.get("first_k_dense_replace"), "parameters": params,
          "transformers": transformers.__version__, "torch": torch.__version__, "positions": a.positions,
          "prefill": a.prefill, "results": {}}
for name, (x, y) in {"engine_bf16_vs_transformers_bf16": (ours, hf16), "engine_bf16_vs_fp32_reference": (ours, ref),
                     "transformers_bf16_vs_fp32_reference": (hf16, ref)}.items():
    report["results"][name] = {p: compare(x, y, rows) for p, rows in parts.items() if rows}
    r = report["results"][name]["all"]
    print(f"{name}: top-1 {100 * r['top1_agreement']:.2f}%, cosine min {r['cosine_min']:.6f} "
          f"median {r['cosine_median']:.6f}", flush=True)
# Random weights give flat distributions: the reference's best and second-best logits are often
# closer than bf16 rounding moves them, so top-1 is also reported where the reference's margin
# (best minus second best, in logit units; the logits' spread is printed beside it) is wider.
top2 = ref.topk(2, dim=-1).values
margin = top2[:, 0] - top2[:, 1]
report["reference_logit_std"] = ref.std().item()
report["reference_margin_median"] = margin.median().item()
report["by_margin"] = []
for delta in (0.02, 0.05, 0.1, 0.2):
    rows = [i for i in range(a.positions) if margin[i].item() >= delta]
    if not rows:
        continue
    row = {"min_margin": delta, "positions": len(rows)}
    for name, (x, y) in {"engine_bf16_vs_transformers_bf16": (ours, hf16), "engine_bf16_vs_fp32_reference": (ours, ref),
                         "transformers_bf16_vs_fp32_reference": (hf16, ref)}.items():
        row[name] = compare(x, y, rows)["top1_agreement"]
    report["by_margin"].append(row)
    print(f"margin >= {delta} ({len(rows)} positions): " + ", ".join(
        f"{k} {100 * v:.2f}%" for k, v in row.items() if k.startswith(("engine", "transformers"))), flush=True)
print(f"reference logits: std {report['reference_logit_std']:.3f}, median top-1 margin "
      f"{report['reference_margin_median']:.4f}", flush=True)
if not a.keep:
    shutil.rmtree(a.work, ignore_errors=True)
if a.json:
    json.dump(report, open(a.json, "w"), indent=2)
