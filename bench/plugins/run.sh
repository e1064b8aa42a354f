#!/usr/bin/env bash
# Plugin benchmark: 1,000,000 records of about 200 bytes through pii-redact and text-quality as
# WASM components and natively, in one run; call overhead for batches of 1, 64 and 1,024;
# boundary cost per record; instantiation. The code is engine/benches/plugins.rs (it uses the
# engine's plugin host directly and the plugins' own crates for the native side).
#
#   bench/plugins/run.sh [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo bench -p tributary --bench plugins -- "${1:-1000000}"
