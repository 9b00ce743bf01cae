#!/usr/bin/env bash
# The CPU backend's matmul paths side by side on a 4-layer Mixtral-shaped MoE stack (hidden 1024,
# intermediate 3584, 8 experts top-2, RMSNorm + residual; 1.4 GB of f32 random weights): every inner-loop
# choice (--matmul-isa) and weight format (--weight-dtype, --expert-format) this CPU runs, with the memory
# read bandwidth first. Prints `moec bench` lines (median ms of 5 after a warm-up, 2 threads); the table
# in BENCHMARKS.md ("CPU matmul paths") is copied from its output. Needs `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
lscpu | grep "Model name"
S="examples/mixtral_stack.moe --set num_hidden_layers=4 --set hidden_size=1024 --set intermediate_size=3584 --tokens 1,16,128,512 --no-dense --repeats 5 --threads 2"
./target/release/moec bench examples/mixtral.moe --set hidden_size=1024 --set intermediate_size=3584 --tokens 1 --repeats 1 --threads 2 --no-dense --bandwidth 2>&1 | grep bandwidth
for cfg in "f32 portable" "f32 avx512" "bf16 portable" "bf16 avx512" "bf16 amx" "f32 avx512 q8_0" "f32 avx512 q4_0"; do
  set -- $cfg
  extra=""; [ -n "${3:-}" ] && extra="--expert-format $3"
  echo "== $cfg (load $(cut -d' ' -f1 /proc/loadavg))"
  ./target/release/moec bench $S --weight-dtype $1 --matmul-isa $2 $extra 2>&1 | tail -4 \
    || echo "  not available on this CPU"
done
