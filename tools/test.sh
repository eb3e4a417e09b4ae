#!/usr/bin/env bash
# The README's test command: sets up everything the tests need, then runs the whole suite.
#
#   tools/test.sh [CARGO TEST ARGS...]   set up (idempotent), then
#                                        `cargo test --release --workspace --all-targets ARGS`
#   tools/test.sh setup                  set up only
#
# Set-up, each step skipped when already in place (a second run only checks, in about a second):
#   1. Debian packages (apt-get, as root; otherwise it prints the command to run and stops):
#      cmake, libcurl4-openssl-dev, build-essential, pkg-config: the rdkafka crate compiles
#      librdkafka from source; kcat: the librdkafka 2.0.2 client check; systemd: systemd-analyze
#      verify of tuning/sluice.service; python3-venv: the Python clients' virtual environment;
#      e2fsprogs, mount: the loop-mounted ext4 of the disk-fault tests; fio, iperf3: the smoke
#      run of benches/compare.sh; nodejs, npm: the kafkajs clients.
#   2. The pinned Python clients (tests/clients/requirements.txt) in tests/clients/.venv, a
#      virtual environment of its own: the tests run its python3, never the system's packages.
#   3. The pinned npm packages (tests/clients/package-lock.json), `npm ci` in tests/clients.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
clients="$root/tests/clients"
venv="$clients/.venv"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# 1. Debian packages.
debian_packages=(cmake libcurl4-openssl-dev build-essential pkg-config kcat systemd python3-venv e2fsprogs mount fio iperf3)
command -v node >/dev/null && command -v npm >/dev/null || debian_packages+=(nodejs npm)

missing=()
for package in "${debian_packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$package")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing packages ${missing[*]}, and no apt-get: install them by hand"
    if [[ $(id -u) -ne 0 ]]; then
        die "the tests need these Debian packages: ${missing[*]}
  install them once with:  sudo apt-get install -y ${missing[*]}
  then run this command again"
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Python clients, in a virtual environment keyed by the requirements file's hash.
requirements="$clients/requirements.txt"
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python3 || $(cat "$venv/.requirements.sha256" 2>/dev/null) != "$wanted" ]]; then
    say "installing the Python clients into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    "$venv/bin/python3" -c 'import confluent_kafka, kafka, prometheus_client.openmetrics.parser'
    echo "$wanted" >"$venv/.requirements.sha256"
fi

# 3. npm packages; `npm ci` writes node_modules/.package-lock.json, equal to the lock file's
# packages when the install is complete.
lock="$clients/package-lock.json"
wanted=$(sha256sum "$lock" | cut -d' ' -f1)
if [[ $(cat "$clients/node_modules/.lock.sha256" 2>/dev/null) != "$wanted" ]]; then
    say "installing the npm packages into $clients/node_modules"
    (cd "$clients" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$wanted" >"$clients/node_modules/.lock.sha256"
fi

if [[ ${1:-} == setup ]]; then
    say "test set-up complete"
    exit 0
fi

cd "$root"
exec cargo test --release --workspace --all-targets "$@"
