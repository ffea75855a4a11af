"""Hugging Face transformers on the same shapes as tollgate-engine-gpu-bench, for the side-by-side
figures: a DeepSeek-V2-Lite-shaped model with random bf16 weights made on the GPU, decode
tokens/s at batch 1 and 32 over a context, and one long prefill.

usage: transformers_bench.py CONFIG_JSON [--context 1024] [--steps 8] [--prefill 2048] [--json OUT]
"""
import argparse
import json
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("config")
ap.add_argument("--context", type=int, default=1024)
ap.add_argument("--steps", type=int, default=8)
ap.add_argument("--prefill", type=int, default=2048)
ap.add_argument("--batches", default="1,32")
ap.add_argument("--json")
a = ap.parse_args()

cfg = AutoConfig.for_model(**{k: v for k, v in json.load(open(a.config)).items() if k != "architectures"})
torch.manual_seed(0)
t0 = time.time()
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
model.eval()
print(f"transformers {transformers.__version__}: model made in {time.time() - t0:.1f} s", flush=True)
report = {"transformers": transformers.__version__, "torch": torch.__version__, "decode": []}
gen = torch.Generator(device="cuda").manual_seed(1)


def sync_time(fn):
    torch.cuda.synchronize()
    t = time.time()
    out = fn()
    torch.cuda.synchronize()
    return time.time() - t, out


with torch.no_grad():
    ids = torch.randint(0, cfg.vocab_size, (1, a.prefill), device="cuda", generator=gen)
    model(ids[:, :64])  # warm-up
    sec, _ = sync_time(lambda: model(ids))
    print(f"prefill {a.prefill} tokens: {sec * 1e3:.1f} ms, {a.prefill / sec:.0f} tokens/s", flush=True)
    report["prefill"] = {"tokens": a.prefill, "seconds": sec, "tokens_per_s": a.prefill / sec}
    for b in [int(x) for x in a.batches.split(",")]:
        ctx = torch.randint(0, cfg.vocab_size, (b, a.context), device="cuda", generator=gen)
        out = model(ctx, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        times = []
        for s in range(a.steps):
            sec, out = sync_time(lambda: model(nxt, past_key_values=past, use_cache=True))
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            if s >= 2:
                times.append(sec)
        times.sort()
        step = times[len(times) // 2]
        print(f"decode batch {b}: {step * 1e3:.1f} ms a step, {b / step:.1f} tokens/s", flush=True)
        report["decode"].append({"batch": b, "context": a.context, "step_seconds": step, "tokens_per_s": b / step})
        del past, out
        torch.cuda.empty_cache()
if a.json:
    json.dump(report, open(a.json, "w"), indent=2)
