#!/usr/bin/env bash
# Builds the `cuda` binary on a machine without a GPU or CUDA toolkit, and packs what a GPU
# machine needs to run it into .gpu/carry (ignored by git; about 20 MB compressed).
#
#   bench/models/gpu/build.sh          # here, once (a cold release build: about 20 minutes)
#   bench/models/gpu/run.sh            # there, with .gpu/carry carried (see that script)
#
# What it does:
# - fetches CUDA 13.0's compiler, headers and the libraries candle links against (cuBLAS,
#   cuRAND, NVRTC, the runtime) as PyPI wheels into .gpu/cuda: the GPU machines here run
#   driver 580 (CUDA 13.0), whose JIT refuses PTX from a newer nvcc, and candle's cudarc 0.19
#   knows CUDA up to 13.4 (CUDA_VERSION overrides);
# - builds the library first, then writes a stub of the driver's libcuda.so from the driver
#   functions cudarc declares (the real one comes with the GPU machine's driver), and links;
# - strips the binary and packs it with the shared libraries it needs beyond glibc (on this
#   Debian 12 machine: 103 MB, 21 MB compressed); the GPU machine needs glibc 2.36 or later.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
WORK=$ROOT/.gpu
CUDA_VERSION=${CUDA_VERSION:-13.0}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3

mkdir -p "$WORK/wheels" "$WORK/cuda" "$WORK/stub"
echo "fetching CUDA $CUDA_VERSION wheels into $WORK/wheels"
"$PY" -m pip download -q --no-deps -d "$WORK/wheels" \
  "nvidia-cuda-nvcc==$CUDA_VERSION.*" "nvidia-cuda-crt==$CUDA_VERSION.*" \
  "nvidia-nvvm==$CUDA_VERSION.*" "nvidia-cuda-runtime==$CUDA_VERSION.*" \
  "nvidia-cuda-nvrtc==$CUDA_VERSION.*" "nvidia-cuda-cccl==$CUDA_VERSION.*" "nvidia-cublas==13.*" "nvidia-curand"
for wheel in "$WORK"/wheels/*.whl; do
  "$PY" -m zipfile -e "$wheel" "$WORK/cuda"
done
CUDA_HOME=$WORK/cuda/nvidia/cu13
chmod +x "$CUDA_HOME"/bin/* "$CUDA_HOME"/nvvm/bin/*
# The linker looks for unversioned names; the wheels carry versioned ones.
for lib in "$CUDA_HOME"/lib/lib*.so.*; do
  base=$(basename "$lib")
  ln -sf "$lib" "$WORK/stub/${base%%.so.*}.so"
done

export PATH=$CUDA_HOME/bin:$PATH CUDA_ROOT=$CUDA_HOME CUDA_PATH=$CUDA_HOME
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} LIBRARY_PATH=$WORK/stub
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
cd "$ROOT"
echo "building the library with --features cuda (kernels for sm_$CUDA_COMPUTE_CAP)"
cargo build --release -p tributary --features cuda --lib

echo "writing a stub libcuda.so.1 from the driver functions cudarc declares"
nm "$CARGO_TARGET_DIR"/release/deps/libcudarc-*.rlib 2>/dev/null \
  | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ { print "void " $2 "(void) {}" }' | sort -u >"$WORK/stub/cuda.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$WORK/stub/libcuda.so" "$WORK/stub/cuda.c"

echo "linking the binary"
cargo build --release -p tributary --features cuda --bin tributary
PACK=$WORK/pack
rm -rf "$PACK" && mkdir -p "$PACK/lib"
strip -o "$PACK/tributary" "$CARGO_TARGET_DIR/release/tributary"
# Everything it loads beyond glibc; the CUDA libraries come with the GPU machine.
ldd "$PACK/tributary" | awk '$3 ~ /^\// { print $3 }' \
  | grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' \
  | xargs -r -I{} cp -L {} "$PACK/lib/"
# Compressed, since what travels to the GPU machine is limited to 64 MiB.
rm -rf "$WORK/carry" && mkdir -p "$WORK/carry"
tar -C "$PACK" -cf - . | xz -T0 -6 >"$WORK/carry/tributary-cuda.tar.xz"
ls -la "$WORK/carry"
echo "done: on the GPU machine, run bench/models/gpu/run.sh with .gpu/carry carried"
