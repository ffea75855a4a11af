#!/usr/bin/env python3
"""Compares golden fixtures made afresh with the committed ones.

Usage: check_goldens.py NEW_DIR COMMITTED_DIR

For each NAME.json in COMMITTED_DIR: the largest absolute and relative logit difference against
NEW_DIR/NAME.json, whether the prompts and the 32 greedy tokens are the same, and the versions
each was made with. Exit 1 when any fixture is missing, its tokens differ, or a logit differs by
more than 1e-5 relative to the largest logit of its position.
"""
import glob
import json
import os
import sys


def main():
    new_dir, old_dir = sys.argv[1], sys.argv[2]
    bad = False
    for old_path in sorted(glob.glob(os.path.join(old_dir, "*.json"))):
        name = os.path.basename(old_path)
        new_path = os.path.join(new_dir, name)
        if not os.path.exists(new_path):
            print(f"{name}: not made afresh")
            bad = True
            continue
        old, new = json.load(open(old_path)), json.load(open(new_path))
        worst_abs = worst_rel = 0.0
        same_prompts = len(old["prompts"]) == len(new["prompts"])
        for po, pn in zip(old["prompts"], new["prompts"]):
            same_prompts = same_prompts and po["tokens"] == pn["tokens"]
            for ro, rn in zip(po["logits"], pn["logits"]):
                scale = max(abs(v) for v in ro) or 1.0
                d = max(abs(a - b) for a, b in zip(ro, rn))
                worst_abs = max(worst_abs, d)
                worst_rel = max(worst_rel, d / scale)
        same_greedy = old["greedy"]["tokens"] == new["greedy"]["tokens"]
        versions = {k: new.get(k) for k in ("transformers", "torch") if k in new}
        print(f"{name}: max |diff| {worst_abs:.3e}, relative to the position's largest logit {worst_rel:.3e}; "
              f"prompts {'same' if same_prompts else 'DIFFER'}, greedy tokens {'same' if same_greedy else 'DIFFER'} "
              f"({len(new['greedy']['tokens'])}); made with {versions}")
        bad = bad or not (same_prompts and same_greedy) or worst_rel > 1e-5
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
