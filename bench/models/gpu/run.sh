#!/usr/bin/env bash
# On a GPU machine, from the repository root, with .gpu/carry carried (made by build.sh):
# unpacks the `cuda` build and checks that the models run there. It trains the benchmark's
# byte-level model from scratch, fine-tunes a LoRA adapter over it (over SmolLM2 instead when
# its GGUF is there, which at 98 MB does not fit what a device call carries beside the build),
# and generates from both; each run's JSON, its log and nvidia-smi's view of the GPU go to
# $OUT (or /tmp/gpu-out).
#
#   device run: command "bench/models/gpu/run.sh", carry [".gpu/carry"]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
OUT=${OUT:-/tmp/gpu-out}
T=/tmp/tributary-cuda
mkdir -p "$OUT" "$T"
tar -xJf "$ROOT/.gpu/carry/tributary-cuda.tar.xz" -C "$T"
# The toolkit's libraries where the image keeps them, else PyTorch's copies of them.
TORCH_CUDA=$(python3 -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH=$T/lib:/usr/local/cuda/lib64:${TORCH_CUDA}:${LD_LIBRARY_PATH:-}
export RUST_LOG=${RUST_LOG:-tributary=info}
BIN=$T/tributary
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.csv"
ldd "$BIN" | tee "$OUT/ldd.txt" | grep "not found" && exit 1

# The benchmark's corpus: Python standard-library sources, about 2 MB.
python3 - "$T/corpus.jsonl" <<'PY'
import json, os, sys, sysconfig
root, total = sysconfig.get_paths()["stdlib"], 0
with open(sys.argv[1], "w") as out:
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py") and total < 2_000_000:
                text = open(os.path.join(d, name), encoding="utf-8", errors="replace").read()
                if text and "\ufffd" not in text:
                    out.write(json.dumps({"text": text}) + "\n")
                    total += len(text.encode())
PY

watch_gpu() { nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -lms 500 >"$OUT/$1-gpu.csv" & echo $!; }
pid=$(watch_gpu scratch)
"$BIN" models train --data "$T/corpus.jsonl" --tokenizer bytes --hidden 256 --layers 4 --heads 4 \
  --lr 3e-3 --steps 30 --batch-size 8 --seq-len 128 --eval-every 0 --out "$T/scratch" \
  >"$OUT/scratch.json" 2>"$OUT/scratch.log"
kill "$pid"
"$BIN" models generate --model "$T/scratch" --prompt "def " --max-tokens 32 >"$OUT/scratch-generate.txt" 2>&1

BASE=$ROOT/.cache/bases/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$BASE" ] || BASE=$T/scratch
pid=$(watch_gpu lora)
"$BIN" models finetune --base "$BASE" --data "$T/corpus.jsonl" --r 8 --alpha 16 \
  --targets q_proj,v_proj --lr 1e-3 --steps 8 --batch-size 2 --seq-len 128 --eval-every 0 \
  --out "$T/lora" >"$OUT/lora.json" 2>"$OUT/lora.log"
kill "$pid"
"$BIN" models generate --model "$BASE" --adapter "$T/lora" --prompt "def " \
  --max-tokens 32 >"$OUT/lora-generate.txt" 2>&1
grep -h "models run on the GPU" "$OUT"/*.log || { echo "the models did not run on the GPU"; exit 1; }
echo "done; results in $OUT"
