#!/usr/bin/env bash
# Benchmark: the README's two commands on a "fresh machine" — a clean clone,
# an empty target folder, an empty infralab cache (so tansu is fetched or
# compiled again) and no infralab images — timed step by step:
#   build     cargo build --release (dependencies included)
#   images    infralab images build --all (mmdebstrap per kind; tansu prebuilt or compiled)
#   tests     cargo test --release (the README's test command)
#
# It REMOVES every local infralab image (`infralab/*`) first: do not run it
# while labs run. Cargo's registry cache (~/.cargo/registry) is kept: crates
# are downloaded once per machine, as on any machine that has built Rust.
# Usage: tests/bench/fresh-machine.sh [--from-source]   (sets INFRALAB_FROM_SOURCE=1)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ "${1:-}" = "--from-source" ] && export INFRALAB_FROM_SOURCE=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/infralab"
cd "$work/infralab"
export XDG_CACHE_HOME="$work/cache" CARGO_TERM_COLOR=never NO_COLOR=1

docker images --format '{{.Repository}}:{{.Tag}}' | grep '^infralab/' | xargs -r docker rmi -f >/dev/null

now() { date +%s; }
t0=$(now)
cargo build --release --locked >"$work/build.log" 2>&1
t1=$(now)
./target/release/infralab images build --all >"$work/images.log" 2>&1
t2=$(now)
status=0
cargo test --release --locked >"$work/tests.log" 2>&1 || status=$?
t3=$(now)

grep -h "tansu" "$work/images.log" | tail -2 || true
tail -3 "$work/tests.log" || true
printf '\n%-8s %6s\n' step seconds
printf '%-8s %6d\n' build $((t1 - t0)) images $((t2 - t1)) tests $((t3 - t2)) total $((t3 - t0))
exit $status
