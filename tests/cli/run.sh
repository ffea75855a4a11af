#!/usr/bin/env bash
# The command line as users meet it: help, version, check-config's exit codes and messages.
set -euo pipefail
bin="${1:?usage: run.sh BUILD_DIR}/tollgate"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$bin" --help | grep -q "check-config FILE" || fail "--help"
"$bin" serve --help | grep -q "shutdown_timeout" || fail "serve --help"
# The embedded config has no file: help must not promise that editing it reloads.
"$bin" serve --help | grep -q "it never reloads" || fail "serve --help on the embedded config"
"$bin" check-config --help | grep -q "exits 1" || fail "check-config --help"
"$bin" --version | grep -Eq '^tollgate [0-9]+\.[0-9]+\.[0-9]+$' || fail "--version"
if "$bin" frobnicate 2>/dev/null; then fail "unknown command accepted"; fi
if "$bin" 2>/dev/null; then fail "no command accepted"; fi

cat >"$work/good.yaml" <<'YAML'
backends:
  - {name: up, kind: openai, base_url: "http://127.0.0.1:9/v1"}
routes:
  - {model: m, targets: [{backend: up}]}
YAML
"$bin" check-config "$work/good.yaml" | grep -q "ok (1 backends, 1 routes, 0 keys)" || fail "good config"

cat >"$work/bad.yaml" <<'YAML'
server:
  listen: 127.0.0.1:8080
  treads: 2
backends:
  - {name: up, kind: openai, base_url: "ftp://h/v1"}
routes:
  - model: m
    targets:
      - backend: missing
YAML
set +e
out=$(TOLLGATE_UNSET_FOR_TEST= "$bin" check-config "$work/bad.yaml" 2>&1)
code=$?
set -e
[ "$code" -eq 1 ] || fail "bad config exit code $code"
echo "$out" | grep -q "bad.yaml:3:3: server.treads: unknown key 'treads'" || fail "unknown key line: $out"
echo "$out" | grep -q "bad.yaml:5:.*backends\[0\].base_url: invalid URL" || fail "bad url line: $out"
echo "$out" | grep -q "bad.yaml:9:.*routes\[0\].targets\[0\].backend: unknown backend 'missing'" || fail "unknown backend: $out"
echo "$out" | grep -q "3 problems found" || fail "count: $out"

cat >"$work/strategy.yaml" <<'YAML'
backends:
  - {name: up, kind: openai, base_url: "http://127.0.0.1:9/v1"}
routes:
  - model: m
    strategy: fastest
    targets: [{backend: up}]
YAML
set +e
out=$("$bin" check-config "$work/strategy.yaml" 2>&1)
code=$?
set -e
[ "$code" -eq 1 ] || fail "unknown strategy exit code $code"
echo "$out" | grep -q "strategy.yaml:5:0: routes\[0\].strategy: unknown strategy 'fastest' (known: priority, weighted, least_busy, latency, cost)" ||
  fail "unknown strategy: $out"

set +e
"$bin" check-config "$work/nope.yaml" >/dev/null 2>&1
code=$?
"$bin" serve --config "$work/bad.yaml" >/dev/null 2>&1
serve_code=$?
set -e
[ "$code" -eq 1 ] || fail "missing file exit code $code"
[ "$serve_code" -eq 1 ] || fail "serve with a bad config exit code $serve_code"
# Prices: the catalogue prices DeepSeek's own API; a provider target with none is named, and the
# config still passes.
cat >"$work/prices.yaml" <<'YAML'
backends:
  - {name: ds, kind: openai, base_url: "https://api.deepseek.com/v1"}
  - {name: other, kind: openai, base_url: "https://api.example.com/v1"}
routes:
  - {model: chat, targets: [{backend: ds, model: deepseek-flash}, {backend: other, model: x}]}
  - {model: priced, targets: [{backend: other, model: y, price: {input: 1, output: 2}}]}
YAML
out=$("$bin" check-config "$work/prices.yaml" 2>&1) || fail "priced config refused: $out"
echo "$out" | grep -q "^note: 1 target is priced from the built-in catalogue (config/prices.yaml: list prices as of " ||
  fail "no catalogue note: $out"
echo "$out" | grep -q "^warning: .*prices.yaml:5:.*routes\[0\].targets\[1\]: no price for backend 'other'" ||
  fail "no unpriced warning: $out"
[ "$(echo "$out" | grep -c "no price")" -eq 1 ] || fail "only one target lacks a price: $out"
echo "cli: 1 passed, 0 failed"
