#!/usr/bin/env bash
# Installs everything Tollgate needs to build, test and benchmark, from Debian packages.
# Usage: deploy/setup.sh            (as root, or with sudo available)
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates
  libboost1.81-dev libcurl4-openssl-dev libssl-dev nlohmann-json3-dev libyaml-cpp-dev
  catch2 libsqlite3-dev sqlite3 libpcre2-dev
  curl
  wrk nginx-light bc
  prometheus
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The end-to-end tests drive tollgate with the official openai npm package; any Node.js >= 18 does.
if ! command -v npm >/dev/null 2>&1; then missing+=(nodejs npm); fi
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "setup: all build dependencies are installed"
# The metering tokenizer (counts tokens when an upstream reports no usage).
"$(dirname "$0")/fetch-tokenizer.sh" || echo "setup: could not fetch the tokenizer; metering will count nothing without usage" >&2
