#!/usr/bin/env python3
"""Every test ctest discovered in a Catch2 binary must run that test, and every Catch2 test must
have its own ctest entry. catch_discover_tests splits a name at ';' (CMake's list separator) into
entries that match nothing, and a Catch2 run that matches nothing passes: this check makes that
a failure. Usage: test_names.py BUILD_DIR"""
import json
import os
import subprocess
import sys

CATCH_BINARIES = {"tollgate-tests", "tollgate-tokenizer-tests", "tollgate-engine-tests", "tollgate-bench-tests"}


def main(build):
    listed = subprocess.run(["ctest", "--test-dir", build, "--show-only=json-v1"], check=True,
                            capture_output=True, text=True).stdout
    tests = json.loads(listed)["tests"]
    problems = []
    names_by_binary = {}
    checked = 0
    for t in tests:
        cmd = t.get("command") or []
        if len(cmd) < 2 or os.path.basename(cmd[0]) not in CATCH_BINARIES:
            continue
        binary = cmd[0]
        if binary not in names_by_binary:
            out = subprocess.run([binary, "--list-test-names-only"], capture_output=True, text=True).stdout
            names_by_binary[binary] = {line for line in out.splitlines() if line.strip()}
        # A discovered test runs its binary with its escaped name as the one filter; the rest
        # (the curl_transport run by tags) are not discoveries.
        unescaped = cmd[1].replace("\\,", ",").replace("\\[", "[").replace("\\]", "]")
        if unescaped != t["name"]:
            continue
        checked += 1
        run = subprocess.run(cmd[:2] + ["--list-test-names-only"], capture_output=True, text=True)
        matched = [line for line in run.stdout.splitlines() if line.strip()]
        if matched != [t["name"]]:
            problems.append(f"ctest entry {t['name']!r} runs {len(matched)} tests ({matched[:3]})")
    discovered = {t["name"] for t in tests}
    for binary, names in names_by_binary.items():
        for name in sorted(names - discovered):
            problems.append(f"{os.path.basename(binary)}: test {name!r} has no ctest entry of its own "
                            "(a ';' in its name?)")
    for p in problems:
        print("test_names:", p)
    if not names_by_binary:
        problems.append("no Catch2 binaries found in ctest's list")
        print("test_names: no Catch2 binaries found")
    print(f"test_names: {checked} discovered tests checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
