"""The arithmetic behind docs/scaling.md: bytes each rank sends per token per MoE layer under
moec's expert parallelism (passes/partition.rs), the time that takes on a stated network,
and the expert compute it is set against. Plain Python, no dependencies; prints the tables
that docs/scaling.md holds (`python3 docs/scaling.py`).

The exchange of one layer, per token a rank is the source of (see `Op::EpRoute`):
  dispatch  k·(N-1)/N rows of D activations out, plus an expert id and a slot id (8 bytes) each
  combine   the same rows back (the reverse all_to_all_v)
  all-gather the token's combined row to the N-1 other ranks (activations are replicated)
Routed slots are assumed spread evenly over the experts, so (N-1)/N of them leave the rank.
"""

ACT_BYTES = 4  # moec's activations are f32
WEIGHT_BYTES = 2  # bf16 checkpoints, as these models ship
NETWORK = 25e9  # bytes/s per rank each way: 200 Gb/s (InfiniBand HDR, one port per rank)
LATENCY = 3e-6  # seconds per message; an all_to_all_v is N-1 messages out per rank
MEMORY = 200e9  # bytes/s of weights a rank streams (one CPU socket, DDR5)
FLOPS = 2e12  # f32 FLOP/s one rank sustains in the grouped matmuls
BATCH = (1, 256)  # tokens per rank: one decode step, one prefill chunk

# hidden size D, routed experts E, selected k, expert intermediate F (GLU: 3 matrices D x F)
MODELS = {
    "Mixtral 8x7B": dict(D=4096, E=8, k=2, F=14336, layers=32),
    "Qwen3-235B-A22B": dict(D=4096, E=128, k=8, F=1536, layers=94),
    "DeepSeek-V3": dict(D=7168, E=256, k=8, F=2048, layers=58),
}
RANKS = (8, 64, 256)
COLLECTIVES = 6  # per layer: all_to_all, 3 all_to_all_v out, 1 back, all_gather_rows


def exchange_bytes(D, k, N):
    """(dispatch + combine, all-gather) bytes one rank sends per source token per layer."""
    away = k * (N - 1) / N
    return 2 * away * D * ACT_BYTES + away * 8, (N - 1) * D * ACT_BYTES


def expert_time(D, E, k, F, N, B):
    """Seconds of expert work on one rank per layer for B source tokens on every rank: the
    larger of its FLOPs and its weight streaming (only experts some token selected)."""
    flops = B * k * 6 * D * F  # every rank runs B·k slots on average
    # Expected local experts that at least one of the B·N·k slots of the step selects.
    hit = E / N * (1 - (1 - 1 / E) ** (B * N * k))
    return max(flops / FLOPS, hit * 3 * D * F * WEIGHT_BYTES / MEMORY)


def main():
    print("| model | ranks | experts/rank | dispatch+combine B/token | all-gather B/token "
          "| exchange µs (1 tok) | experts µs (1 tok) | exchange µs (256 tok) | experts µs (256 tok) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in MODELS.items():
        for N in RANKS:
            if N > m["E"]:
                print(f"| {name} | {N} | — | more ranks than experts: not partitioned "
                      f"(replicate experts, below) | | | | | |")
                continue
            a2a, gather = exchange_bytes(m["D"], m["k"], N)
            cols = []
            for B in BATCH:
                net = B * (a2a + gather) / NETWORK + COLLECTIVES * (N - 1) * LATENCY
                work = expert_time(m["D"], m["E"], m["k"], m["F"], N, B)
                cols += [f"{net * 1e6:,.0f}", f"{work * 1e6:,.0f}"]
            print(f"| {name} | {N} | {m['E'] // N} | {a2a:,.0f} | {gather:,.0f} | "
                  + " | ".join(cols) + " |")
    print()
    print("Without the all-gather (data-parallel attention, each rank its own sequences):")
    print("| model | ranks | exchange µs (256 tok) | experts µs (256 tok) |")
    print("|---|---:|---:|---:|")
    for name, m in MODELS.items():
        for N in (n for n in RANKS if n <= m["E"]):
            a2a, _ = exchange_bytes(m["D"], m["k"], N)
            net = 256 * a2a / NETWORK + 4 * (N - 1) * LATENCY
            work = expert_time(m["D"], m["E"], m["k"], m["F"], N, 256)
            print(f"| {name} | {N} | {net * 1e6:,.0f} | {work * 1e6:,.0f} |")


if __name__ == "__main__":
    main()
