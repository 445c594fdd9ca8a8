#!/usr/bin/env bash
# Runs Pantau's whole test suite on a fresh machine: installs the
# third-party tools the end-to-end tests drive (Debian packages) when
# missing, builds the binaries, then runs every test in the workspace.
# The tests start their own service instances on loopback ports; no system
# service is used.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if [ ${#need[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
