#!/usr/bin/env bash
# The GPU checks behind README's GPU table, on a machine with an NVIDIA GPU, the CUDA
# driver, cuBLAS and NVRTC, and PyTorch with CUDA:
#   1. the GPU-vs-CPU kernel tests (tests/cuda.rs),
#   2. the DCGAN VAE and the ConvVAE trained for 10 epochs on the GPU (seed 0),
#   3. the same models' epochs in PyTorch on the same GPU (scripts/torch_gpu_vae.py).
# BIN holds the two binaries, prebuilt elsewhere if this machine has no Rust:
#   cargo build --release --features cuda --example vae        -> BIN/vae
#   cargo test --release --features cuda --test cuda --no-run  -> BIN/cuda-tests
# Logs go to LOGS (default ./gpu-logs).
set -uo pipefail
BIN=${BIN:-target/release}
LOGS=${LOGS:-gpu-logs}
mkdir -p "$LOGS"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOGS/gpu.txt"
# cuBLAS and NVRTC from the CUDA toolkit, or from PyTorch's wheels.
extra=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for lib in glob.glob(os.path.join(sp, "nvidia", "*", "lib")):
        dirs.add(lib)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${extra}:${LD_LIBRARY_PATH:-}"
echo "== GPU kernel tests"
"$BIN/cuda-tests" --test-threads=1 --nocapture > "$LOGS/tests.log" 2>&1
grep -E "^test |panicked|SKIPPED|test result" "$LOGS/tests.log"
for model in dcgan conv strided; do
    for tf in off on; do
        [ "$model" = strided ] && [ "$tf" = on ] && continue
        echo "== latent, $model VAE, 10 epochs on the GPU, --tf32 $tf"
        "$BIN/vae" --model "$model" --seed 0 --device cuda --tf32 "$tf" --out "$LOGS/$model-$tf" \
            > "$LOGS/$model-$tf.log" 2>&1
        grep -E "^device|^training on|epoch 1/|epoch 10/|median|test loss|test ELBO|reconstruction|sigma_x|IWAE|evaluation|panicked|error" \
            "$LOGS/$model-$tf.log"
    done
done
echo "== PyTorch on the same GPU"
for m in dcgan conv; do
    for tf in on off; do
        python3 scripts/torch_gpu_vae.py --model "$m" --epochs 4 --tf32 "$tf" 2>&1 | tee -a "$LOGS/torch.log" | tail -1
    done
done
