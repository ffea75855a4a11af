#!/usr/bin/env python3
"""Golden logits for the engine's CPU forward, computed by Hugging Face transformers.

Usage: make_goldens.py CHECKPOINTS_ROOT OUT_DIR

CHECKPOINTS_ROOT holds one folder per recipe, made by `tollgate-engine make-tiny --recipe
tests/engine/recipes/NAME.json --out CHECKPOINTS_ROOT/NAME`, with the recipe copied beside the
weights as recipe.json (its seed draws the prompts). For each, this loads the folder with
transformers (float32, eager attention, on the CPU so that no TF32 or GPU kernel is involved),
checks every parameter against the safetensors files, and writes OUT_DIR/NAME.json with:
  - the logits of every position of three prompts (random token ids drawn from the recipe's seed),
    rounded to 7 significant digits;
  - 32 greedy steps from the third prompt (argmax of a full forward each step, no cache), with the
    gap between the best and second-best logit at each step.
Per-layer hidden states of the third prompt go to OUT_DIR/debug_hidden.json (not committed).

How the committed goldens were made (checkpoints generated on the development machine, Python run
on the GPU machine's CPU, transformers 5.17.0, torch 2.11.0):
  for r in tests/engine/recipes/*.json; do n=$(basename $r .json)
    build-engine/tollgate-engine make-tiny --recipe $r --out build-engine/goldens-ckpt/$n
    cp $r build-engine/goldens-ckpt/$n/recipe.json; done
  CUDA_VISIBLE_DEVICES="" python3 tests/engine/make_goldens.py build-engine/goldens-ckpt OUT
  cp OUT/v*.json tests/engine/goldens/
Made again on 2026-12-01 (checkpoints from that day's make-tiny, the same versions), then
`tests/engine/check_goldens.py OUT tests/engine/goldens`: every logit and greedy token identical.
"""
import glob
import json
import os
import re
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

PROMPT_LENGTHS = [1, 5, 12]
GREEDY_STEPS = 32


def file_tensors(folder):
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        for name, t in load_file(path).items():
            out[name] = t.to(torch.float32)
    return out


def expected_param(name, shape, files, n_experts):
    if name in files:
        return files[name]
    m = re.match(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$", name)
    if not m:
        return None
    p, kind = m.group(1), m.group(2)
    if kind == "gate_up_proj":
        t = torch.stack([torch.cat([files[f"{p}.{e}.gate_proj.weight"], files[f"{p}.{e}.up_proj.weight"]], 0)
                         for e in range(n_experts)])
    else:
        t = torch.stack([files[f"{p}.{e}.down_proj.weight"] for e in range(n_experts)])
    if tuple(t.shape) != tuple(shape):
        t = t.transpose(1, 2).contiguous()
    return t


def r7(x):
    return float(f"{x:.7g}")


def main():
    root, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    torch.set_grad_enabled(False)
    debug = {}
    print("transformers", transformers.__version__, "torch", torch.__version__, flush=True)
    for folder in sorted(glob.glob(os.path.join(root, "*"))):
        if not os.path.isdir(folder):
            continue
        name = os.path.basename(folder)
        recipe = json.load(open(os.path.join(folder, "recipe.json")))
        cfg = recipe["config"]
        try:
            model, info = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
        except TypeError:
            model, info = AutoModelForCausalLM.from_pretrained(
                folder, torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
        model = model.to("cpu").eval()
        files = file_tensors(folder)
        missing, fixed, used = [], [], set()
        params = dict(model.named_parameters())
        params.update(dict(model.named_buffers()))
        for pname, t in model.state_dict().items():
            exp = expected_param(pname, t.shape, files, cfg["n_routed_experts"])
            if exp is None:
                missing.append(pname)
                continue
            if tuple(exp.shape) != tuple(t.shape) or not torch.equal(exp, t.to(torch.float32)):
                fixed.append(pname)
                params[pname].data.copy_(exp.reshape(t.shape))
        loading = {k: sorted(map(str, v)) for k, v in info.items() if v}
        print(name, "loading info", loading, "missing", missing, "fixed", fixed, flush=True)

        g = torch.Generator().manual_seed(int(recipe["seed"]))
        prompts = [torch.randint(0, cfg["vocab_size"], (n,), generator=g) for n in PROMPT_LENGTHS]
        fixture = {
            "recipe": name,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "model_class": type(model).__name__,
            "loading": {"info": loading, "params_without_file_tensor": missing, "params_overwritten": fixed},
            "prompts": [],
        }
        for ids in prompts:
            out = model(input_ids=ids[None], output_hidden_states=True)
            logits = out.logits[0].to(torch.float32)
            fixture["prompts"].append({"tokens": ids.tolist(),
                                       "logits": [[r7(v) for v in row.tolist()] for row in logits]})
        debug[name] = [[[r7(v) for v in row.tolist()] for row in h[0]] for h in out.hidden_states]

        seq = prompts[-1].clone()
        tokens, margins = [], []
        for _ in range(GREEDY_STEPS):
            last = model(input_ids=seq[None]).logits[0, -1]
            top = torch.topk(last, 2)
            nxt = int(torch.argmax(last))
            tokens.append(nxt)
            margins.append(r7(float(top.values[0] - top.values[1])))
            seq = torch.cat([seq, torch.tensor([nxt])])
        gen = model.generate(prompts[-1][None], do_sample=False, max_new_tokens=GREEDY_STEPS,
                             min_new_tokens=GREEDY_STEPS, pad_token_id=0)
        gen_tokens = gen[0, len(prompts[-1]):].tolist()
        fixture["greedy"] = {"prompt": prompts[-1].tolist(), "tokens": tokens, "margins": margins,
                             "min_margin": min(margins), "generate_tokens": gen_tokens,
                             "generate_agrees": gen_tokens == tokens}
        print(name, "greedy", tokens, "min margin", min(margins), "generate agrees", gen_tokens == tokens,
              "logit scale", float(logits.abs().max()), flush=True)
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(fixture, f, separators=(",", ":"))
            f.write("\n")
    with open(os.path.join(out_dir, "debug_hidden.json"), "w") as f:
        json.dump(debug, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
