#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the parsers at
# Pantau's entrances: the envelope validator, the gatekeeper's MQTT reader,
# the registry parser and the line-protocol writer (tests/fuzz/).
#   tests/fuzz.sh            quick: 20 s per target (what CI runs)
#   tests/fuzz.sh long       10 min per target
#   tests/fuzz.sh SECONDS    that long per target
#   tests/fuzz.sh merge      folds what the last runs found into the corpora
#                            in the repository, minimized (then commit them)
# Each run starts from the hand-written seeds (tests/fuzz/seeds/TARGET) and
# the corpus (tests/fuzz/corpus/TARGET), both replayed first — a regression
# there fails at once — and keeps what it finds under target/fuzz/work/, so
# the repository's corpus only changes by `merge`.
# A crash, a failed assertion, a stall (5 s on one input) or 1 GiB of memory
# fails the run; the input is saved under target/fuzz/artifacts/TARGET/ and
# `tests/fuzz.sh repro TARGET FILE` runs it again. Builds on the stable
# toolchain without a sanitizer (`-s none`); the targets assert on
# outcomes, not only on crashes. Writes one row per target for the
# reliability table (target/faults/fuzz-TARGET.json).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-quick}"
targets=(envelope mqtt_frames registry line_protocol)
export CARGO_TARGET_DIR="$PWD/target/fuzz"
if [ ! -x target/tools/bin/cargo-fuzz ]; then
  echo "tests/fuzz.sh: installing cargo-fuzz (crates.io)"
  cargo install -q --locked --root target/tools cargo-fuzz@0.13.2
fi
fuzz() { target/tools/bin/cargo-fuzz "$@"; }
fuzz build --fuzz-dir tests/fuzz -s none
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
case "$mode" in
  quick) secs=20 ;;
  long) secs=600 ;;
  merge)
    for t in "${targets[@]}"; do
      mkdir -p "target/fuzz/work/$t" "tests/fuzz/seeds/$t"
      new="target/fuzz/merged/$t"
      rm -rf "$new"; mkdir -p "$new"
      "$bin/$t" -set_cover_merge=1 "$new" "tests/fuzz/seeds/$t" "tests/fuzz/corpus/$t" \
        "target/fuzz/work/$t" 2>&1 | tail -1
      rm -rf "tests/fuzz/corpus/$t"
      mv "$new" "tests/fuzz/corpus/$t"
    done
    exit 0 ;;
  repro) "$bin/$2" "$3"; exit ;;
  *[!0-9]*|"") echo "usage: tests/fuzz.sh [quick|long|SECONDS|merge|repro TARGET FILE]" >&2; exit 2 ;;
  *) secs="$mode"; mode="${secs}s" ;;
esac
mkdir -p target/faults
order=100
for t in "${targets[@]}"; do
  order=$((order + 1))
  work="target/fuzz/work/$t" artifacts="target/fuzz/artifacts/$t"
  mkdir -p "$work" "$artifacts" "tests/fuzz/seeds/$t"
  log="target/fuzz/$t.log"
  echo "tests/fuzz.sh: $t for ${secs}s"
  if ! "$bin/$t" "$work" "tests/fuzz/seeds/$t" "tests/fuzz/corpus/$t" -max_total_time="$secs" -timeout=5 \
      -rss_limit_mb=1024 -max_len=4096 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" >"$log" 2>&1; then
    tail -40 "$log"
    echo "tests/fuzz.sh: $t FAILED; reproduce with: tests/fuzz.sh repro $t $(ls -t "$artifacts"/* | head -1)" >&2
    exit 1
  fi
  python3 - "$t" "$mode" "$secs" "$order" "$log" <<'PY'
import json, pathlib, re, sys
t, mode, secs, order, log = sys.argv[1:]
text = pathlib.Path(log).read_text(errors="replace")
runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
cov = re.findall(r"cov: (\d+)", text)
seeds = sum(len(list(pathlib.Path(f"tests/fuzz/{d}/{t}").glob("*"))) for d in ("seeds", "corpus"))
what = {
  "envelope": ("Hostile envelopes (fuzzed)", "every reading accepted or rejected, none lost; accepted ones registered to the gateway; re-encoded, accepted unchanged"),
  "mqtt_frames": ("Hostile MQTT byte streams (fuzzed)", "the same packets and ending error however TCP splits the bytes (random splits, one byte at a time); no stall, no crash"),
  "registry": ("Hostile registry files (fuzzed)", "a registry that parses, written back as TOML, parses to the same registry"),
  "line_protocol": ("Hostile tag and field values into InfluxDB line protocol (fuzzed)", "InfluxData's parser reads back the same measurement, tags, typed fields and time"),
}[t]
row = {
  "order": int(order), "fault": what[0],
  "injection": f"libFuzzer via cargo-fuzz, `tests/fuzz/fuzz_targets/{t}.rs`, from {seeds} committed inputs",
  "load": f"{int(runs[-1]) if runs else 0:,} inputs in {secs} s".replace(",", " "),
  "outcome": f"{what[1]} (coverage {cov[-1] if cov else '?'} edges)",
  "lost": 0, "duplicated": 0, "mode": mode,
}
pathlib.Path(f"target/faults/fuzz-{t}.json").write_text(json.dumps(row, indent=2))
print(f"  {row['load']}, coverage {cov[-1] if cov else '?'}")
PY
done
