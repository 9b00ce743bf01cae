#!/usr/bin/env python3
"""moec against Hugging Face transformers on the same Mixtral MoE layer, same machine, same run.

What it does:
  1. Builds transformers' eager `MixtralSparseMoeBlock` (hidden 1024, intermediate 3584,
     8 experts, top-2, float32) with seeded random weights scaled so that activations are
     O(1), and saves them under the Hub checkpoint names that examples/mixtral.moe binds
     (`model.layers.0.block_sparse_moe.*`; transformers 5 keeps the experts fused as
     `gate_up_proj` [E, 2I, H] = cat(w1, w3) and `down_proj` [E, H, I], split back here),
     as f32 and as a bf16 copy, into --data-dir (default target/bench-data/, not committed).
  2. Sanity: runs `moec run --backend cpu` on those weights and one batch of tokens and
     prints max |moec - torch| / max |torch| for `y` and `router_logits`.
  3. Times torch (torch.set_num_threads(--threads), inference_mode, median of --repeats
     after warm-up) and `moec bench --weights ... --threads ... --bandwidth --json` (the
     scheduled graph, the dense all-experts graph, the measured memory read bandwidth),
     plus moec with bf16 weights when `moec bench` has `--weight-dtype`.
  4. Times a top-1-of-16 layer (examples/switch.moe, 16 experts, capacity >= tokens so no
     token is dropped): moec's scheduled graph against its dense all-experts graph.
  5. Prints one table and writes it, with machine, date, versions and command lines, to
     benches/BENCHMARKS.md, and a plot to benches/compare_torch.png.

Usage (from anywhere; paths are relative to the repository root):
    python3 -m venv .venv && .venv/bin/pip install -r benches/requirements.txt
    .venv/bin/python benches/compare_torch.py                 # builds target/release/moec if missing
    .venv/bin/python benches/compare_torch.py --tokens 1,16 --repeats 5 --no-write   # quick look
"""

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

from md_sections import write_section

import torch

import transformers
from safetensors.torch import load_file, save_file
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

transformers.utils.logging.set_verbosity_error()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN, INTER, EXPERTS, TOP_K = 1024, 3584, 8, 2
PREFIX = "model.layers.0.block_sparse_moe"
SPEC = "examples/mixtral.moe"
SETS = ["--set", f"hidden_size={HIDDEN}", "--set", f"intermediate_size={INTER}"]
SWITCH_SPEC = "examples/switch.moe"
SWITCH_EXPERTS = 16


# --------------------------------------------------------------------------- the layer


def scaled_randn(*shape, fan_in, scale=1.0):
    """Normal weights with std scale/sqrt(fan_in): unit-variance inputs give O(1) outputs."""
    return torch.randn(*shape, dtype=torch.float32) * (scale / math.sqrt(fan_in))


def make_block(seed):
    """The eager transformers block with seeded weights, and the same weights under Hub names."""
    torch.manual_seed(seed)
    cfg = transformers.MixtralConfig(
        hidden_size=HIDDEN, intermediate_size=INTER, num_local_experts=EXPERTS,
        num_experts_per_tok=TOP_K, hidden_act="silu", router_jitter_noise=0.0,
    )
    cfg._experts_implementation = "eager"
    block = MixtralSparseMoeBlock(cfg).eval()
    router = scaled_randn(EXPERTS, HIDDEN, fan_in=HIDDEN, scale=2.0)
    gate_up = scaled_randn(EXPERTS, 2 * INTER, HIDDEN, fan_in=HIDDEN)
    down = scaled_randn(EXPERTS, HIDDEN, INTER, fan_in=INTER)
    block.load_state_dict(
        {"gate.weight": router, "experts.gate_up_proj": gate_up, "experts.down_proj": down}, strict=True
    )
    hub = {f"{PREFIX}.gate.weight": router.clone()}
    for e in range(EXPERTS):  # gate_up_proj rows: first I = w1 (gate), next I = w3 (up)
        hub[f"{PREFIX}.experts.{e}.w1.weight"] = gate_up[e, :INTER].clone()
        hub[f"{PREFIX}.experts.{e}.w3.weight"] = gate_up[e, INTER:].clone()
        hub[f"{PREFIX}.experts.{e}.w2.weight"] = down[e].clone()
    return block, hub


def time_torch(block, tokens, repeats, warmup, seed):
    """Median wall time (ms) of block(x) per token count, x ~ N(0, 1) of shape [1, tokens, H]."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    with torch.inference_mode():
        for t in tokens:
            x = torch.randn(1, t, HIDDEN, generator=gen)
            for _ in range(warmup):
                block(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                block(x)
                times.append(time.perf_counter() - start)
            out[t] = statistics.median(times) * 1e3
            print(f"  torch  tokens={t:<4} {out[t]:9.3f} ms", flush=True)
    return out


# --------------------------------------------------------------------------- moec


def sh(cmd, **kw):
    """Runs a command from the repository root, echoing it; returns its stdout."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"command failed with status {res.returncode}")
    return res.stdout


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def rel_err(got, want):
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


def sanity(moec, block, data, weights, tokens, seed, extra=()):
    """moec run on the cpu backend vs the torch block on one batch: relative errors."""
    x = torch.randn(tokens, HIDDEN, generator=torch.Generator().manual_seed(seed + 1))
    inp, outp = os.path.join(data, "input.safetensors"), os.path.join(data, "moec_out.safetensors")
    save_file({"x": x.contiguous()}, inp)
    sh([moec, "run", SPEC, *SETS, "--backend", "cpu", "--weights", weights, "--input", inp, "--output", outp,
        *extra])
    got = load_file(outp)
    with torch.inference_mode():
        want_y = block(x[None])[0]
        want_logits = block.gate(x)[0]
    return {"y": rel_err(got["y"], want_y), "router_logits": rel_err(got["router_logits"], want_logits)}


def rows_by(lines, graph):
    return {r["tokens"]: r for r in lines if r.get("graph") == graph}


# --------------------------------------------------------------------------- report


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores{mem}, {platform.system()} {platform.release()}"


def fmt(v, spec, suffix=""):
    return "—" if v is None else format(v, spec) + suffix


def build_table(tokens, torch_ms, sched, dense, bf16, bw):
    """The main table: one row per token count, cells as strings."""
    head = ["tokens", "torch ms", "moec ms", "torch/moec", "moec GB/s", "% of read BW", "moec GFLOP/s",
            "dense ms", "dense/sched"]
    if bf16 is not None:
        head += ["moec bf16 ms", "torch/bf16"]
    rows = []
    for t in tokens:
        s, d = sched[t], dense.get(t)
        ms = s["median_ms"]
        row = [
            str(t), fmt(torch_ms[t], ".3f"), fmt(ms, ".3f"), fmt(torch_ms[t] / ms, ".2f", "×"),
            fmt(s["weight_gbps"], ".1f"), fmt(100 * s["weight_gbps"] / bw if bw else None, ".0f", "%"),
            fmt(s["gflops"], ".1f"),
            fmt(d["median_ms"] if d else None, ".2f"), fmt(d["median_ms"] / ms if d else None, ".2f", "×"),
        ]
        if bf16 is not None:
            b = bf16.get(t)
            row += [fmt(b["median_ms"] if b else None, ".3f"),
                    fmt(torch_ms[t] / b["median_ms"] if b else None, ".2f", "×")]
        rows.append(row)
    return head, rows


def markdown(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def plain(head, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def plot(path, tokens, torch_ms, sched, dense, bf16):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax.plot(tokens, [torch_ms[t] for t in tokens], "o-", label="transformers eager (torch)")
    ax.plot(tokens, [sched[t]["median_ms"] for t in tokens], "s-", label="moec (scheduled)")
    if bf16:
        ax.plot(tokens, [bf16[t]["median_ms"] for t in tokens], "^-", label="moec, bf16 weights")
    if dense:
        ax.plot(tokens, [dense[t]["median_ms"] for t in tokens], "x--", color="grey", label="moec dense (all experts)")
    ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="ms (median)",
           title=f"Mixtral layer {HIDDEN}/{INTER}, 8 experts, top-2, f32")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    pos = range(len(tokens))
    ax2.bar(pos, [torch_ms[t] / sched[t]["median_ms"] for t in tokens], color="tab:orange")
    ax2.axhline(1.0, color="black", lw=0.8)
    ax2.set_xticks(list(pos), [str(t) for t in tokens])
    ax2.set(xlabel="tokens", ylabel="torch ms / moec ms", title="speed-up over transformers eager")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="1,4,16,128,512", help="token counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per token count (median)")
    ap.add_argument("--warmup", type=int, default=3, help="torch warm-up runs per token count")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and moec bench --threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-tokens", type=int, default=16, help="tokens of the sanity batch")
    ap.add_argument("--switch-tokens", default="1,16,128,512", help="token counts of the top-1-of-16 layer")
    ap.add_argument("--moec", default=os.path.join("target", "release", "moec"), help="the moec binary")
    ap.add_argument("--data-dir", default=os.path.join("target", "bench-data"), help="weights, inputs (not committed)")
    ap.add_argument("--md", default=os.path.join("benches", "BENCHMARKS.md"))
    ap.add_argument("--png", default=os.path.join("benches", "compare_torch.png"))
    ap.add_argument("--note", default="", help="a remark written under the title (e.g. 'noisy machine')")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    switch_tokens = [int(t) for t in args.switch_tokens.split(",")]

    moec = os.path.join(REPO, args.moec) if not os.path.isabs(args.moec) else args.moec
    if not os.path.exists(moec):
        print(f"{moec} missing: cargo build --release", flush=True)
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    data = os.path.join(REPO, args.data_dir)
    os.makedirs(data, exist_ok=True)
    torch.set_num_threads(args.threads)

    print(f"building MixtralSparseMoeBlock ({HIDDEN}/{INTER}, {EXPERTS} experts, top-{TOP_K}) ...", flush=True)
    block, hub = make_block(args.seed)
    w32 = os.path.join(data, "mixtral_weights.safetensors")
    w16 = os.path.join(data, "mixtral_weights_bf16.safetensors")
    save_file({k: v.contiguous() for k, v in hub.items()}, w32)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in hub.items()}, w16)
    rel_w32, rel_w16 = os.path.relpath(w32, REPO), os.path.relpath(w16, REPO)

    bench_help = sh([moec, "bench", "--help"])
    has_bf16 = "--weight-dtype" in bench_help

    print("sanity: moec run (cpu backend) vs torch ...", flush=True)
    errs = sanity(moec, block, data, rel_w32, args.check_tokens, args.seed)
    print(f"  max rel. error y {errs['y']:.2e}, router_logits {errs['router_logits']:.2e}")
    if errs["y"] > 1e-4 or errs["router_logits"] > 1e-4:
        print("  WARNING: moec and torch disagree", file=sys.stderr)

    print(f"timing torch ({args.threads} threads) ...", flush=True)
    torch_ms = time_torch(block, tokens, args.repeats, args.warmup, args.seed)
    errs16 = None
    if has_bf16:  # the same check with bf16 weights, against the torch block on the rounded values
        print("sanity: moec run on the bf16 checkpoint vs torch on bf16-rounded weights ...", flush=True)
        rounded = {k: v.to(torch.bfloat16).float() for k, v in block.state_dict().items()}
        block.load_state_dict(rounded, strict=True)
        errs16 = sanity(moec, block, data, rel_w16, args.check_tokens, args.seed)
        print(f"  max rel. error y {errs16['y']:.2e}, router_logits {errs16['router_logits']:.2e}")
    del block

    tok = ",".join(map(str, tokens))
    common = ["--tokens", tok, "--repeats", str(args.repeats), "--threads", str(args.threads), "--json"]
    moec_cmd = ["bench", SPEC, *SETS, "--weights", rel_w32, *common, "--bandwidth"]
    lines = json_lines(sh([moec, *moec_cmd]))
    bw = next((r["read_gbps"] for r in lines if r.get("backend") == "memory"), None)
    bw_threads = next((r.get("threads") for r in lines if r.get("backend") == "memory"), None)
    sched, dense = rows_by(lines, "scheduled"), rows_by(lines, "dense")
    for need in ("tokens", "backend", "median_ms", "gflops", "weight_gbps"):
        assert all(need in r for r in sched.values()), f"moec bench --json lacks {need}"
    cmds = ["moec " + " ".join(moec_cmd)]

    bf16 = None
    if has_bf16:
        bf16_cmd = ["bench", SPEC, *SETS, "--weights", rel_w16, *common, "--no-dense"]  # a bf16 checkpoint stays bf16
        bf16 = rows_by(json_lines(sh([moec, *bf16_cmd])), "scheduled")
        cmds.append("moec " + " ".join(bf16_cmd))
    else:
        print("moec bench has no --weight-dtype: no bf16 column")

    cap = max(switch_tokens)
    sw_cmd = ["bench", SWITCH_SPEC, "--set", f"num_experts={SWITCH_EXPERTS}", "--set", f"expert_capacity={cap}",
              "--tokens", ",".join(map(str, switch_tokens)), "--repeats", str(max(3, args.repeats // 3)),
              "--threads", str(args.threads), "--json"]
    sw = json_lines(sh([moec, *sw_cmd]))
    sw_sched, sw_dense = rows_by(sw, "scheduled"), rows_by(sw, "dense")
    switch = {t: sw_dense[t]["median_ms"] / sw_sched[t]["median_ms"] for t in switch_tokens}
    cmds.append("moec " + " ".join(sw_cmd))

    head, rows = build_table(tokens, torch_ms, sched, dense, bf16, bw)
    sw_head = ["tokens", "scheduled ms", "dense ms", "dense/scheduled"]
    sw_rows = [[str(t), f"{sw_sched[t]['median_ms']:.3f}", f"{sw_dense[t]['median_ms']:.3f}", f"{switch[t]:.1f}×"]
               for t in switch_tokens]
    print()
    print(f"memory read bandwidth: {bw:.1f} GB/s ({bw_threads} threads)")
    print(plain(head, rows))
    print(f"\ntop-1 of {SWITCH_EXPERTS} (switch.moe, d_model 768, d_ff 3072), moec scheduled vs dense:")
    print(plain(sw_head, sw_rows))
    if args.no_write:
        return

    moec_version = sh([moec, "--version"]).strip()
    try:
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rustc = "rustc: not found"
    today = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    script_cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(os.path.abspath(sys.argv[0]), REPO),
                                                               *sys.argv[1:]])
    png_rel = os.path.relpath(os.path.join(REPO, args.png), os.path.dirname(os.path.join(REPO, args.md)))
    md = [
        "# Benchmarks: moec vs transformers eager",
        "",
        "Written by `benches/compare_torch.py`; re-run it rather than editing this section (see `benches/README.md`).",
    ]
    if args.note:
        md += ["", f"**Note:** {args.note}"]
    md += [
        "",
        f"- Layer: Mixtral `MixtralSparseMoeBlock` (`{SPEC}`), hidden {HIDDEN}, intermediate {INTER}, "
        f"{EXPERTS} experts, top-{TOP_K}, f32 weights (seed {args.seed}, scaled so activations are O(1)).",
        f"- Machine: {machine()}. Date: {today}.",
        f"- Versions: {moec_version} ({rustc}); torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}.",
        f"- Threads: torch `set_num_threads({args.threads})`, moec `--threads {args.threads}`; "
        f"memory read bandwidth {bw:.1f} GB/s measured by `moec bench --bandwidth` ({bw_threads} threads, "
        "streaming read of 1 GiB).",
        f"- Times: median of {args.repeats} runs after warm-up (torch: `inference_mode`, {args.warmup} warm-up runs, "
        "input `[1, tokens, hidden]`; moec: one warm-up run, routing included in both).",
        f"- Sanity ({args.check_tokens} tokens, `moec run --backend cpu` vs torch): max rel. error "
        f"`y` {errs['y']:.1e}, `router_logits` {errs['router_logits']:.1e}"
        + (f"; with bf16 weights (a bf16 checkpoint, torch on the same rounded weights) `y` {errs16['y']:.1e}, "
           f"`router_logits` {errs16['router_logits']:.1e}." if errs16 else "."),
        "- Command: `" + script_cmd + "`, which ran:",
    ]
    md += [f"  - `{c}`" for c in cmds]
    md += [
        "",
        markdown(head, rows),
        "",
        "moec GB/s: weight bytes the scheduled graph reads per second, counted as `moec graph --stats` does: "
        "min(experts, tokens·top-k) experts' weights, an upper bound when tokens share experts, so it can pass 100% "
        "at a few tokens; % of read BW: of the measured memory read bandwidth. Weights repeatedly read in the same "
        "order may also partly stay in the last-level cache. GFLOP/s: `--stats` FLOPs per second. dense: moec's "
        "all-experts graph (`--passes none`). "
        + ("bf16: moec with bf16 weights (a bf16 checkpoint, kept bf16)." if bf16 is not None else
           "No bf16 column: this `moec bench` has no `--weight-dtype`."),
        "",
        f"## Top-1 of {SWITCH_EXPERTS}: scheduled vs dense",
        "",
        f"`{SWITCH_SPEC}` (d_model 768, d_ff 3072, ReLU experts) with {SWITCH_EXPERTS} experts and capacity {cap} "
        "(no token dropped), random weights; moec only.",
        "",
        markdown(sw_head, sw_rows),
        "",
        f"![moec vs transformers eager]({png_rel})",
        "",
    ]
    write_section(os.path.join(REPO, args.md), "compare_torch.py", "\n".join(md), first=True)
    plot(os.path.join(REPO, args.png), tokens, torch_ms, sched, dense, bf16)
    print(f"\nwrote {args.md} and {args.png} ({os.path.getsize(os.path.join(REPO, args.png)) // 1024} KiB)")


if __name__ == "__main__":
    main()
