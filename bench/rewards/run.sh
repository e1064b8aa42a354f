#!/usr/bin/env bash
# Rewards benchmarks: accounting throughput with the `proportional` policy as a WASM plugin
# and natively (the same crate), and closing an epoch of ACCOUNTS accounts (payout tree and
# every proof) against @openzeppelin/merkle-tree in Node on the same leaves (the roots must
# match). Needs `./dev test` to have installed tests/crosscheck/node_modules.
#
#   bench/rewards/run.sh [ACCOUNTS] [COMPLETIONS]     (defaults 1000000 and 2000)
set -euo pipefail
cd "$(dirname "$0")/../.."
accounts="${1:-1000000}"
completions="${2:-2000}"
out="${TMPDIR:-/tmp}/tributary-bench/rewards"
mkdir -p "$out"
cargo bench -q -p tributary --bench rewards --no-run
for threads in 1 4; do
  cargo bench -q -p tributary --bench rewards -- accounting "$completions" "$threads" | tee "$out/accounting-$threads.json"
done
cargo bench -q -p tributary --bench rewards -- close "$accounts" "$out/leaves.csv" | tee "$out/close-ours.json"
/usr/bin/time -f '{"peak_rss_kb": %M}' -o "$out/close-js-rss.json" \
  node --max-old-space-size=16384 bench/rewards/close.mjs "$out/leaves.csv" | tee "$out/close-js.json"
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
load = lambda n: json.load(open(os.path.join(out, n)))
print("\n| accounting | threads | plugin completions/s | native completions/s | ratio | policy call plugin / native µs |")
print("|---|---|---|---|---|---|")
for t in (1, 4):
    a = load(f"accounting-{t}.json")
    print(f"| {a['completions']} completions x 3 rounds | {t} | {a['wasm_per_s']:.0f} | {a['native_per_s']:.0f} | {a['ratio']:.2f} | {a['wasm_call_us']:.1f} / {a['native_call_us']:.1f} |")
ours, js = load("close-ours.json"), load("close-js.json")
assert ours["root"] == js["root"], (ours["root"], js["root"])
print(f"\nepoch close, {ours['accounts']:,} accounts (roots equal: {ours['root']}):")
print(f"ours: close {ours['close_s']:.2f} s (tree alone {ours['tree_s']:.2f} s), all proofs {ours['proofs_s']:.2f} s, together {ours['close_and_proofs_s']:.2f} s")
print(f"@openzeppelin/merkle-tree: tree {js['tree_s']:.2f} s, all proofs {js['proofs_s']:.2f} s, together {js['tree_and_proofs_s']:.2f} s, peak {load('close-js-rss.json')['peak_rss_kb'] / 1024:.0f} MB")
print(f"ratio (theirs / ours, tree and proofs): {js['tree_and_proofs_s'] / ours['close_and_proofs_s']:.0f}x; tree alone {js['tree_s'] / ours['tree_s']:.0f}x")
PY
