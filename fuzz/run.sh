#!/usr/bin/env bash
# Builds and runs the fuzz targets with cargo-fuzz (libFuzzer) on stable Rust.
#
#   fuzz/run.sh TARGET SECONDS   fuzz one target for SECONDS
#   fuzz/run.sh all SECONDS      fuzz every target for SECONDS each, one after the other
#   fuzz/run.sh build            build every target
#   fuzz/run.sh cmin TARGET      minimize fuzz/corpus/TARGET (what gets committed)
#   fuzz/run.sh list             the targets
#
# Each run reads the committed corpus (fuzz/corpus/TARGET, where new inputs are written), the
# captured traffic (fuzz/seeds/TARGET) and the project's fixtures for that target, and stops at
# the first failure: the input is in fuzz/artifacts/TARGET/, and the exit status is non-zero.
# Extra libFuzzer flags go in FUZZ_FLAGS (e.g. FUZZ_FLAGS=-jobs=2).
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd .. && pwd)

targets=(startup_packet frame_scanner upstream_startup kdl_check frozen_config)

# Stable Rust: no sanitizer (ASan needs -Zsanitizer, a nightly flag; the code under test has no
# `unsafe`, so the no-panic and invariant checks are what matters). Debug assertions and
# overflow checks stay on; 16 codegen units keep the build to a few minutes on 2 cores.
build_flags=(--sanitizer none --release --debug-assertions --codegen-units 16)

need_cargo_fuzz() {
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (cargo install --locked cargo-fuzz)" >&2
    cargo install --locked cargo-fuzz
  fi
}

max_len() {
  case "$1" in
    kdl_check | frozen_config) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

# The project's fixtures for a target, copied to a scratch directory (read-only for libFuzzer;
# they stay where they are in the repository rather than being copied into the corpus).
fixtures() {
  local target=$1 dir=$2 f
  case "$target" in
    kdl_check)
      for f in "$root"/examples/*.kdl "$root"/tests/golden/*/manifest.kdl \
        $(find "$root/compiler/tests/check" -name '*.kdl'); do
        cp "$f" "$dir/$(sha1sum "$f" | cut -c1-40)"
      done
      ;;
    frozen_config)
      for f in "$root"/tests/golden/*/relay/frozen.json; do
        cp "$f" "$dir/$(sha1sum "$f" | cut -c1-40)"
      done
      ;;
  esac
}

run_one() {
  local target=$1 seconds=$2 scratch status=0
  mkdir -p "corpus/$target" "seeds/$target"
  scratch=$(mktemp -d)
  fixtures "$target" "$scratch"
  echo "== $target for ${seconds}s"
  # shellcheck disable=SC2086  # FUZZ_FLAGS is a list of flags.
  cargo fuzz run "${build_flags[@]}" "$target" "corpus/$target" "seeds/$target" "$scratch" -- \
    -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_FLAGS:-} || status=$?
  rm -rf "$scratch"
  return "$status"
}

case "${1:-}" in
  list) printf '%s\n' "${targets[@]}" ;;
  build)
    need_cargo_fuzz
    cargo fuzz build "${build_flags[@]}"
    ;;
  cmin)
    need_cargo_fuzz
    cargo fuzz cmin "${build_flags[@]}" "${2:?usage: fuzz/run.sh cmin TARGET}" \
      -- -max_len="$(max_len "$2")"
    ;;
  all)
    seconds=${2:?usage: fuzz/run.sh all SECONDS}
    need_cargo_fuzz
    cargo fuzz build "${build_flags[@]}"
    failed=()
    for target in "${targets[@]}"; do
      run_one "$target" "$seconds" || failed+=("$target")
    done
    if [ ${#failed[@]} -gt 0 ]; then
      echo "fuzzing failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
      exit 1
    fi
    ;;
  "" | -h | --help)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    target=$1
    seconds=${2:?usage: fuzz/run.sh TARGET SECONDS}
    if [[ ! " ${targets[*]} " == *" $target "* ]]; then
      echo "unknown target $target; the targets are: ${targets[*]}" >&2
      exit 2
    fi
    need_cargo_fuzz
    run_one "$target" "$seconds"
    ;;
esac
