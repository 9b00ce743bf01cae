#!/usr/bin/env python3
"""moec against transformers and llama.cpp on a whole Mixtral-shaped model: prefill and decode tokens/s.

The model: `MixtralForCausalLM`, 4 layers, hidden 1024, intermediate 3584, 8 experts top-2, 16 attention
heads over 4 KV heads (head_dim 64), vocab 32000, max_position_embeddings 4096, seeded random weights
scaled so activations stay O(1). About 1.7 GB in f32, 0.85 GB in bf16: more than the last-level cache.

What it does:
  1. Writes the model with `save_pretrained` (safetensors) into target/bench-data/mixtral_bench_f32/ and a
     bf16 copy into target/bench-data/mixtral_bench_bf16/ (config `dtype`/`torch_dtype` bfloat16), with the
     tiny byte-level tokenizer.json of tests/fixtures/models/mixtral (prompts are given as ids) and no
     end-of-sequence id (so every contender generates all its tokens). Reused when already there.
  2. Converts both to GGUF with llama.cpp's own convert_hf_to_gguf.py, taken from the llama-cpp-python
     sdist of the installed version (vendor/llama.cpp; downloaded with `pip download` when missing). The
     tiny tokenizer's pre-tokenizer checksum is unknown to llama.cpp, so the converter is told it is GPT-2's
     (byte-level with GPT-2's regex, which it is); the vocabulary is padded to 32000 as usual.
  3. Times, each in its own process, with the same prompt (512 ids cycling 3..318) and 64 greedy new
     tokens, after a warm-up run, median of --repeats runs:
       moec        `moec generate SPEC --weights DIR --prompt-ids ... --backend cpu --json`
                   (its own prefill_tokens_per_s / decode_tokens_per_s);
       transformers eager attention, `experts_implementation` eager and grouped_mm, f32 and bf16:
                   one forward over the prompt with a DynamicCache (`logits_to_keep=1`, as `generate`
                   does) + argmax = prefill, then single-token forwards with the cache + argmax = decode
                   (checked once against `model.generate(do_sample=False)`, same ids);
       llama.cpp   llama-cpp-python `Llama.eval` on the GGUF files, n_threads = n_threads_batch = threads,
                   n_batch = n_ubatch = 512 (the prompt in one batch); wall clock around eval + argmax.
     Prefill tokens/s = prompt tokens / (prompt forward + choosing the first new id); decode tokens/s =
     (new tokens - 1) / the time of the later steps: `moec generate`'s definition, used for all three.
  4. `moec bench examples/mixtral.moe --bandwidth`: the memory read bandwidth, against which moec decode's
     weight streaming rate is put (weight bytes one decode step reads x decode tokens/s). With `perf` on
     the PATH, profiles moec's prefill and decode (`perf record`), shares of samples by part.
  5. Before every timed section it waits (polling every 30 s, --max-wait in all) for the 1-minute load
     average to fall to --quiet-load, and records the load average it measured at.
  6. Prints the tables and writes them, with machine, versions, date, commands, into the section
     "Whole model (Mixtral-shaped, 4 layers)" of benches/BENCHMARKS.md (only that section is replaced),
     and all numbers to target/bench-data/compare_models.json.

Usage (from anywhere; paths are relative to the repository root; see benches/README.md):
    .venv/bin/pip install -r benches/requirements.txt        # llama-cpp-python builds llama.cpp (cmake, C++)
    .venv/bin/python benches/compare_models.py               # everything (~15-25 min on 2 cores)
    .venv/bin/python benches/compare_models.py --quick       # smoke test: short prompt, 1 run, writes no table
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

from md_sections import write_section

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.relpath(os.path.abspath(__file__), REPO)

DIMS = dict(
    vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=4, num_attention_heads=16,
    num_key_value_heads=4, head_dim=64, num_local_experts=8, num_experts_per_tok=2,
    max_position_embeddings=4096,
)
# Every param of models/mixtral.moe, for a moec that cannot yet read them from config.json.
SPEC_PARAMS = dict(DIMS, rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=0)
SPEC = "models/mixtral.moe"
BLOCK_SPEC = "examples/mixtral.moe"
TOKENIZER = "tests/fixtures/models/mixtral/tokenizer.json"
SECTION = "Whole model (Mixtral-shaped, 4 layers)"
DTYPES = ("f32", "bf16")
# Bytes per weight of each format: GGUF's q8_0 / q4_0 blocks are 32 values and an f16 scale.
BYTES = {"f32": 4, "bf16": 2, "q8_0": 34 / 32, "q4_0": 18 / 32}
TARGET_BW = 0.85
TARGET_PREFILL = 1.5


# --------------------------------------------------------------------------- helpers


def log(msg=""):
    print(msg, flush=True)


def quote(cmd):
    return " ".join(shlex.quote(str(c)) for c in cmd)


def sh(cmd, check=True, **kw):
    """Runs a command from the repository root, echoing it; returns the CompletedProcess."""
    log("$ " + quote(cmd))
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-4000:])
        raise SystemExit(f"command failed with status {res.returncode}")
    return res


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def result_line(text):
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit("worker printed no RESULT line")


def prompt_ids(n):
    return [3 + i % 316 for i in range(n)]


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Quiet:
    """Waits for a quiet machine before each timed section, within one overall budget."""

    def __init__(self, threshold, budget_s, poll_s=30):
        self.threshold, self.budget, self.poll = threshold, budget_s, poll_s
        self.waited = 0.0
        self.log = []  # (section, load average measured at, seconds waited, quiet?)

    def wait(self, section):
        start, load = time.time(), loadavg()
        while load > self.threshold and self.waited < self.budget:
            log(f"  load average {load:.2f} > {self.threshold}: waiting ({self.waited:.0f}/{self.budget:.0f} s used)")
            time.sleep(self.poll)
            self.waited += self.poll
            load = loadavg()
        quiet = load <= self.threshold
        self.log.append(dict(section=section, load=load, waited_s=round(time.time() - start), quiet=quiet))
        log(f"[{section}] 1-min load average {load:.2f}" + ("" if quiet else " (NOT quiet: wait budget spent)"))
        return load


# --------------------------------------------------------------------------- the model


def init_value(name, shape, g, torch):
    """Seeded weights with std ~ 1/sqrt(fan_in): unit-variance inputs give O(1) outputs."""
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32)  # noqa: E731
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * rn(*shape)
    if name == "model.embed_tokens.weight":
        return rn(*shape)
    if name == "lm_head.weight":
        return rn(*shape) * (2.0 / math.sqrt(shape[1]))
    if name.endswith("gate.weight") and shape[0] == DIMS["num_local_experts"]:  # the router
        return rn(*shape) * (2.0 / math.sqrt(shape[1]))
    if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):  # [E, out, in]
        return rn(*shape) / math.sqrt(shape[2])
    if name.endswith(".weight") and len(shape) == 2:  # nn.Linear [out, in]
        return rn(*shape) / math.sqrt(shape[1])
    raise AssertionError(f"no init rule for {name} {shape}")


def build_checkpoints(data, seed):
    """save_pretrained of the seeded model in f32 and bf16; returns the two directories."""
    import torch
    import transformers
    from transformers import MixtralConfig, MixtralForCausalLM

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    f32_dir, bf16_dir = (os.path.join(data, f"mixtral_bench_{d}") for d in DTYPES)
    meta_path = os.path.join(data, "mixtral_bench_meta.json")
    meta = dict(DIMS, seed=seed, transformers=transformers.__version__, init="compare_models.py v1")
    try:
        with open(meta_path) as f:
            if json.load(f) == meta and all(
                os.path.exists(os.path.join(d, "config.json")) for d in (f32_dir, bf16_dir)
            ):
                log(f"reusing {os.path.relpath(f32_dir, REPO)} and {os.path.relpath(bf16_dir, REPO)}")
                return f32_dir, bf16_dir
    except (OSError, ValueError):
        pass
    log(f"building MixtralForCausalLM {DIMS} (seed {seed}) ...")
    torch.manual_seed(seed)
    cfg = MixtralConfig(
        **DIMS, rms_norm_eps=1e-5, hidden_act="silu", router_jitter_noise=0.0, sliding_window=None,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=None, pad_token_id=None,
    )
    model = MixtralForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            p.copy_(init_value(name, tuple(p.shape), g, torch))
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = 1
    model.generation_config.pad_token_id = None
    for d in (f32_dir, bf16_dir):
        shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(f32_dir)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(bf16_dir)
    del model
    for d, dt in ((f32_dir, "float32"), (bf16_dir, "bfloat16")):
        shutil.copy(os.path.join(REPO, TOKENIZER), os.path.join(d, "tokenizer.json"))
        path = os.path.join(d, "config.json")
        with open(path) as f:
            conf = json.load(f)
        conf["dtype"] = conf["torch_dtype"] = dt  # transformers 5 writes `dtype`; older readers want `torch_dtype`
        with open(path, "w") as f:
            json.dump(conf, f, indent=2, sort_keys=True)
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    return f32_dir, bf16_dir


def weight_bytes_per_decode_token(dtype_bytes):
    """Weights one decode step reads: attention, router, norms and 2 of 8 experts per layer, one
    embedding row, the final norm and lm_head (the KV cache not counted), at `dtype_bytes` per weight
    (the router and norms, a few KB, are counted so too)."""
    h, i, v = DIMS["hidden_size"], DIMS["intermediate_size"], DIMS["vocab_size"]
    q = DIMS["num_attention_heads"] * DIMS["head_dim"]
    kv = DIMS["num_key_value_heads"] * DIMS["head_dim"]
    layer = h * q + 2 * h * kv + q * h + DIMS["num_local_experts"] * h + 2 * h
    experts = DIMS["num_hidden_layers"] * DIMS["num_experts_per_tok"] * 3 * h * i
    rest = (DIMS["num_hidden_layers"] * layer + h + h + v * h) * dtype_bytes
    return rest + experts * dtype_bytes


# --------------------------------------------------------------------------- llama.cpp


def llama_version():
    res = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                         capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


def llama_cpp_source(data, version):
    """vendor/llama.cpp of the llama-cpp-python sdist of `version` (downloaded when missing)."""
    sdist = os.path.join(data, "sdist")
    src = os.path.join(sdist, f"llama_cpp_python-{version}", "vendor", "llama.cpp")
    if os.path.exists(os.path.join(src, "convert_hf_to_gguf.py")):
        return src
    os.makedirs(sdist, exist_ok=True)
    tar = os.path.join(sdist, f"llama_cpp_python-{version}.tar.gz")
    if not os.path.exists(tar):
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", sdist,
            f"llama-cpp-python=={version}"])
    with tarfile.open(tar) as t:
        t.extractall(sdist, filter="data")
    return src


# Runs convert_hf_to_gguf.py with two adjustments for this checkpoint: no tokenizer.model means no
# SentencePiece vocabulary (without importing sentencepiece), and the tiny tokenizer's pre-tokenizer
# is GPT-2's (its checksum is in no list).
CONVERT = r"""
import os, runpy, sys
src = sys.argv[1]
sys.path[:0] = [src, os.path.join(src, "gguf-py")]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
_sp = base.TextModel._set_vocab_sentencepiece
def _set_vocab_sentencepiece(self, *a, **k):
    if not (self.dir_model / "tokenizer.model").is_file():
        raise FileNotFoundError("no tokenizer.model")
    return _sp(self, *a, **k)
base.TextModel._set_vocab_sentencepiece = _set_vocab_sentencepiece
sys.argv = [os.path.join(src, "convert_hf_to_gguf.py")] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert_gguf(src, ckpt, out, outtype):
    stamp = os.path.join(os.path.dirname(ckpt), "mixtral_bench_meta.json")
    if os.path.exists(out) and os.path.getmtime(out) > os.path.getmtime(stamp):
        log(f"reusing {os.path.relpath(out, REPO)}")
        return
    sh([sys.executable, "-c", CONVERT, src, ckpt, "--outtype", outtype, "--outfile", out])


# llama.cpp's own quantizer (llama_model_quantize), for q4_0, which convert_hf_to_gguf.py does not write.
QUANTIZE = r"""
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = 2
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""
LLAMA_FTYPE = {"q8_0": 7, "q4_0": 2}  # LLAMA_FTYPE_MOSTLY_Q8_0, LLAMA_FTYPE_MOSTLY_Q4_0


def quantize_gguf(f32_gguf, out, fmt):
    if os.path.exists(out) and os.path.getmtime(out) > os.path.getmtime(f32_gguf):
        log(f"reusing {os.path.relpath(out, REPO)}")
        return
    sh([sys.executable, "-c", QUANTIZE, f32_gguf, out, str(LLAMA_FTYPE[fmt])])


# --------------------------------------------------------------------------- workers (own processes)


def worker_torch(args):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(
        args.ckpt, dtype=dtype, attn_implementation="eager", experts_implementation=args.impl
    ).eval()
    impl = model.config._experts_implementation
    ids = prompt_ids(args.prompt_len)
    prompt = torch.tensor([ids])

    def once():
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            t0 = time.perf_counter()
            out = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = int(out.logits[0, -1].argmax())
            t1 = time.perf_counter()
            new = [nxt]
            for _ in range(args.new_tokens - 1):
                out = model(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
                nxt = int(out.logits[0, -1].argmax())
                new.append(nxt)
            t2 = time.perf_counter()
        return dict(prefill=len(ids) / (t1 - t0), decode=(len(new) - 1) / (t2 - t1), ids=new)

    runs = timed(once, args.warmup, args.repeats)
    res = dict(runs=runs, experts_implementation=impl, torch=torch.__version__,
               transformers=transformers.__version__, threads=torch.get_num_threads())
    if args.generate_check:
        with torch.inference_mode():
            gen = model.generate(prompt, do_sample=False, max_new_tokens=args.new_tokens)
        res["generate_ids_match"] = gen[0, len(ids):].tolist() == runs[0]["ids"]
    print("RESULT " + json.dumps(res), flush=True)


def worker_llama(args):
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    if args.dtype in LLAMA_FTYPE:
        # llama.cpp repacks quantized weights for its AMX / CPU "extra" buffer types, which crashes
        # (SIGSEGV/SIGILL) on this Xeon; Llama() has no switch for it, so its default params are patched.
        import llama_cpp.llama_cpp as lib
        default = lib.llama_model_default_params

        def no_extra_bufts():
            p = default()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = no_extra_bufts
    llm = Llama(model_path=args.gguf, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=args.threads,
                n_threads_batch=args.threads, logits_all=False, verbose=False, seed=0,
                flash_attn=args.impl == "flash-attn")
    ids = prompt_ids(args.prompt_len)

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))

    def once():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        nxt = int(np.argmax(last_logits()))
        t1 = time.perf_counter()
        new = [nxt]
        for _ in range(args.new_tokens - 1):
            llm.eval([nxt])
            nxt = int(np.argmax(last_logits()))
            new.append(nxt)
        t2 = time.perf_counter()
        return dict(prefill=len(ids) / (t1 - t0), decode=(len(new) - 1) / (t2 - t1), ids=new)

    runs = timed(once, args.warmup, args.repeats)
    info = llama_cpp.llama_print_system_info()
    res = dict(runs=runs, llama_cpp_python=llama_cpp.__version__,
               system_info=info.decode() if isinstance(info, bytes) else str(info))
    print("RESULT " + json.dumps(res), flush=True)


def timed(once, warmup, repeats):
    for _ in range(warmup):
        once()
    runs = []
    for r in range(repeats):
        runs.append(once())
        log(f"  run {r + 1}: prefill {runs[-1]['prefill']:.1f} tok/s, decode {runs[-1]['decode']:.2f} tok/s")
    return runs


# --------------------------------------------------------------------------- moec


def moec_spec(moec, data, f32_dir):
    """How to give moec the model's params: from config.json (once moec reads it), with --set for
    every param, or with --set on a copy of the spec without the string params and `from` clauses
    (for a moec that parses neither). Returns (spec, set args, how)."""
    probe = ["--weights", os.path.relpath(f32_dir, REPO), "--prompt-ids", "3", "--max-new-tokens", "1",
             "--backend", "cpu", "--json"]
    sets = [a for k, v in SPEC_PARAMS.items() for a in ("--set", f"{k}={v}")]
    if sh([moec, "generate", SPEC, *probe], check=False).returncode == 0:
        return SPEC, [], "params from config.json"
    if sh([moec, "generate", SPEC, *sets, *probe], check=False).returncode == 0:
        return SPEC, sets, "params with --set"
    with open(os.path.join(REPO, SPEC)) as f:
        text = f.read()
    text = re.sub(r'(?m)^\s*param\s+\w+\s*=\s*"[^"]*"\s*\n', "", text)
    text = re.sub(r'\s+from\s+"[^"]*"(\s*,\s*"[^"]*")*', "", text)
    derived = os.path.join(data, "mixtral_bench.moe")
    with open(derived, "w") as f:
        f.write(text)
    derived = os.path.relpath(derived, REPO)
    res = sh([moec, "generate", derived, *sets, *probe], check=False)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit("moec generate runs the model in none of the three ways")
    return derived, sets, f"params with --set on {derived} ({SPEC} less its string params and `from` clauses)"


def run_moec(moec, spec, sets, ckpt, extra, args):
    cmd = [moec, "generate", spec, *sets, "--weights", os.path.relpath(ckpt, REPO), "--prompt-ids",
           ",".join(map(str, prompt_ids(args.prompt_len))), "--max-new-tokens", str(args.new_tokens),
           "--backend", "cpu", "--json", *extra]
    shown = quote(["moec", *cmd[1:]])
    shown = re.sub(r"--prompt-ids \S+", f"--prompt-ids <{args.prompt_len} ids>", shown)
    log("$ " + shown)
    runs = []
    for r in range(args.warmup + args.repeats):
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if res.returncode != 0:
            sys.stderr.write(res.stderr)
            raise SystemExit("moec generate failed")
        out = json_lines(res.stdout)[-1]
        if out["stop"] != "max_new_tokens" or len(out["ids"]) != args.new_tokens:
            raise SystemExit(f"moec stopped early: {out['stop']}, {len(out['ids'])} ids")
        if r >= args.warmup:
            runs.append(dict(prefill=out["prefill_tokens_per_s"], decode=out["decode_tokens_per_s"], ids=out["ids"]))
            log(f"  run {len(runs)}: prefill {runs[-1]['prefill']:.1f} tok/s, decode {runs[-1]['decode']:.2f} tok/s")
    return dict(runs=runs), shown


PERF_LINE = re.compile(r"^\s*([0-9.]+)%\s+\[(.)\]\s+(.*?)\s*$")


def perf_symbols(data_file, window=None):
    """{symbol: % of samples} from `perf report` (kernel symbols marked [k])."""
    cmd = ["perf", "report", "-i", data_file, "--no-children", "--sort", "sym", "--stdio", "-g", "none"]
    if window:
        cmd += ["--time", window]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    syms = {}
    for line in out.splitlines():
        m = PERF_LINE.match(line)
        if m:
            name = ("[k] " if m.group(2) == "k" else "") + m.group(3)
            syms[name] = syms.get(name, 0.0) + float(m.group(1))
    return syms


def part_of(sym):
    h, v, i = DIMS["hidden_size"], DIMS["vocab_size"], DIMS["intermediate_size"]
    if sym.startswith("[k] "):
        return "kernel (page faults, scheduling)"
    if "amx" in sym:
        return "matmul sums (AMX tiles)"
    if "avx512" in sym:
        return "matmul sums (AVX-512 tiles)"
    if sym.startswith("matmul_") and sym.endswith("_epilogue"):
        return "matmul epilogues (JIT)"
    if sym.startswith("matmul_"):
        if "glu" in sym or "weighted" in sym:
            return "experts (JIT)"
        if f"_n{v}" in sym:
            return "lm_head (JIT)"
        return "q/k/v/o, router (JIT)"
    if "gemm" in sym:
        return "gemm crate"
    if "matmul::run" in sym:
        return "matmul::run (unpacks panels for gemm)"
    if "layers::attention" in sym or "layers::dot" in sym:
        return "attention"
    return "other"


def profile_moec(moec, spec, sets, ckpt, args, data, dtype):
    """perf profiles of moec's prefill and decode: {phase: {part: %}}."""
    ids = ",".join(map(str, prompt_ids(args.prompt_len)))
    base = [moec, "generate", spec, *sets, "--weights", os.path.relpath(ckpt, REPO), "--prompt-ids", ids,
            "--backend", "cpu", "--json"]
    pre_file, dec_file = (os.path.join(data, f"perf_{dtype}_{p}.data") for p in ("prefill", "decode"))
    log(f"perf: moec {dtype} prefill, then decode")
    start = time.perf_counter()
    res = subprocess.run(["perf", "record", "-F", "999", "-o", pre_file, "--", *base, "--max-new-tokens", "1"],
                         cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        log("perf record failed: " + (res.stderr.strip().splitlines() or [""])[-1])
        return {}
    prefill_s = args.prompt_len / json_lines(res.stdout)[-1]["prefill_tokens_per_s"]
    share = max(1, min(99, round(100 * (1 - 0.9 * prefill_s / wall))))
    out = {"prefill": perf_symbols(pre_file, f"{share}%-100%")}
    # decode: start sampling once load and prefill are over (they took `wall` above)
    res = subprocess.run(["perf", "record", "-F", "999", "-D", str(int(1000 * (wall + 1.5))), "-o", dec_file, "--",
                          *base, "--max-new-tokens", str(PROFILE_NEW)], cwd=REPO, capture_output=True, text=True)
    if res.returncode == 0:
        out["decode"] = perf_symbols(dec_file)
    parts = {}
    for phase, syms in out.items():
        if not syms:
            log(f"perf: no samples for moec {dtype} {phase}; its column is left out")
            continue
        total = sum(syms.values())
        grouped = {}
        for sym, pct in syms.items():
            grouped[part_of(sym)] = grouped.get(part_of(sym), 0.0) + 100 * pct / total
        parts[phase] = grouped
    return parts


PROFILE_NEW = 320  # new tokens of the decode profile (its first 1.5 s after load and prefill are not sampled)
PARTS = ["experts (JIT)", "lm_head (JIT)", "q/k/v/o, router (JIT)", "matmul sums (AVX-512 tiles)",
         "matmul sums (AMX tiles)", "matmul epilogues (JIT)", "gemm crate", "matmul::run (unpacks panels for gemm)",
         "attention", "kernel (page faults, scheduling)", "other"]
MATMUL_PARTS = [p for p in PARTS if p not in ("attention", "kernel (page faults, scheduling)", "other")]


def profile_table(profiles):
    cols = [(d, phase) for d, p in profiles.items() for phase in ("prefill", "decode") if phase in p]
    if not cols:
        return [], []
    head = ["part"] + [f"{d} {phase}" for d, phase in cols]
    rows = []
    for part in PARTS:
        vals = [profiles[d][phase].get(part, 0.0) for d, phase in cols]
        if any(v >= 0.5 for v in vals):
            rows.append([part] + [f"{v:.0f}%" for v in vals])
    return head, rows


# --------------------------------------------------------------------------- report


def amx_available():
    """Whether this CPU and kernel have AMX-BF16 (moec's `--matmul-isa amx`)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
        return "amx_bf16" in flags.split()
    except OSError:
        return False


def machine():
    cpu, l3 = platform.processor() or platform.machine(), ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        cpu = fields.get("Model name", cpu).strip()
        l3 = fields.get("L3 cache", "").strip()
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return cpu, f"{os.cpu_count()} logical cores" + (f", L3 {l3}" if l3 else "") + mem + \
        f", {platform.system()} {platform.release()}"


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def spread(runs, key):
    vals = [r[key] for r in runs]
    return (max(vals) - min(vals)) / statistics.median(vals) if len(vals) > 1 else 0.0


def agree(a, b):
    """How many leading ids two greedy runs share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def fmt(v, spec, suffix=""):
    return "—" if v is None else format(v, spec) + suffix


def markdown(head, rows, left=2):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(":---" if i < left else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def plain(head, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines)


def flops_per_token():
    """(FLOPs per token without lm_head, lm_head's FLOPs per row)."""
    h, i, v = DIMS["hidden_size"], DIMS["intermediate_size"], DIMS["vocab_size"]
    q = DIMS["num_attention_heads"] * DIMS["head_dim"]
    kv = DIMS["num_key_value_heads"] * DIMS["head_dim"]
    layer = h * q + 2 * h * kv + q * h + DIMS["num_local_experts"] * h + DIMS["num_experts_per_tok"] * 3 * h * i
    return 2 * DIMS["num_hidden_layers"] * layer, 2 * v * h


def findings(summary, profiles, bw, dtypes, args):
    """The misses, with the numbers behind them and the likely causes (as of the moec measured)."""
    m = {d: summary.get(f"{d} moec") for d in dtypes}
    if not any(m.values()):
        return []
    out = ["", "Findings:", ""]
    prof = lambda d, phase, part: profiles.get(d, {}).get(phase, {}).get(part)  # noqa: E731
    llama = {d: max((summary[k] for k in summary if k.startswith(f"{d} llama.cpp")), key=lambda s: s["decode"],
                    default=None) for d in dtypes}
    tf = {d: max((summary[k] for k in summary if k.startswith(f"{d} transformers")), key=lambda s: s["prefill"],
                 default=None) for d in dtypes}
    dec = [d for d in dtypes if m[d] and llama[d]]
    if dec:
        text = ("- **Decode vs llama.cpp**: moec " + ", ".join(
            f"{m[d]['decode']:.1f} tok/s vs {llama[d]['decode']:.1f} ({m[d]['decode'] / llama[d]['decode']:.2f}×) at {d}"
            for d in dec) + "; moec streams " + ", ".join(
            f"{m[d]['weight_gbps']:.1f} GB/s vs llama.cpp's {llama[d]['weight_gbps']:.1f} at {d}" for d in dec) + ".")
        k = [d for d in dec if profiles.get(d, {}).get("decode")]
        if k:
            text += (" moec's decode step is the weight stream: its matmuls (sums and epilogues) take " + ", ".join(
                f"{sum(prof(d, 'decode', p) or 0 for p in MATMUL_PARTS):.0f}% of the decode samples at {d} "
                f"(attention {prof(d, 'decode', 'attention') or 0:.0f}%, the kernel "
                f"{prof(d, 'decode', 'kernel (page faults, scheduling)') or 0:.0f}%)" for d in k) + ".")
        out.append(text)
    if bw and any(m[d] for d in dtypes):
        best_l = max((llama[d]["weight_gbps"] for d in dtypes if llama[d]), default=None)
        text = (f"- **Bandwidth**: `moec bench --bandwidth` reads {bw:.1f} GB/s; moec's decode streams " + ", ".join(
            f"{m[d]['weight_gbps'] / bw:.0%} of it at {d}" for d in dtypes if m[d]) + f" (target {TARGET_BW:.0%}).")
        if best_l and best_l > bw:
            text += (f" llama.cpp's f32 decode implies at least {best_l:.1f} GB/s, so the 1-GiB read test "
                     "underestimates what two cores stream (or the L3 serves part of each step's reads); against "
                     f"that rate moec streams " + ", ".join(
                         f"{m[d]['weight_gbps'] / best_l:.0%} at {d}" for d in dtypes if m[d]) + ".")
        out.append(text)
    pre = [d for d in dtypes if m[d] and tf[d]]
    if pre:
        useful, lm = flops_per_token()
        text = ("- **Prefill vs transformers**: moec " + ", ".join(
            f"{m[d]['prefill']:.0f} tok/s vs {tf[d]['prefill']:.0f} ({m[d]['prefill'] / tf[d]['prefill']:.2f}×, "
            f"target {TARGET_PREFILL}×) at {d}" for d in pre) + ". transformers' matmuls are MKL (f32) and oneDNN "
            "(bf16) GEMMs: " + ", ".join(
            f"{tf[d]['prefill'] * useful / 1e9:.0f} GFLOP/s at {d}" for d in pre) + " on 2 cores (bf16 above the f32 "
            "FMA peak of 2 cores: bf16 matrix instructions, AMX-BF16 / AVX512-BF16, both on this CPU). Like transformers and llama.cpp, `moec generate` "
            "computes lm_head for the last prompt row only (`passes::last_token`); on every row it would be "
            f"{lm / (useful + lm):.0%} of the prefill FLOPs")
        pp = [d for d in pre if profiles.get(d, {}).get("prefill")]
        for d in pp:
            parts = sorted(profiles[d]["prefill"].items(), key=lambda kv: -kv[1])[:4]
            text += f"; its prefill samples at {d}: " + ", ".join(f"{p} {v:.0f}%" for p, v in parts)
        amx = [d for d in pre if summary.get(f"{d} moec amx")]
        for d in amx:
            a = summary[f"{d} moec amx"]
            text += (f". With `--matmul-isa amx` (AMX-BF16 tiles for bf16 matmuls of 16+ rows, activations rounded to "
                     f"bf16 as transformers does): {a['prefill']:.0f} tok/s ({a['prefill'] / tf[d]['prefill']:.2f}× "
                     "transformers)")
        text += "."
        out.append(text)
    return out


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 64-token prompt, 8 new tokens, 1 run, eager only, writes no table")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per contender (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    ap.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads (moec uses every core)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experts", default="eager,grouped_mm", help="transformers experts implementations")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--quants", default="q8_0,q4_0",
                    help="quantized formats: moec --weight-format on the f32 checkpoint, llama.cpp's quantized GGUF")
    ap.add_argument("--llama-fa", default="off,on",
                    help="llama.cpp flash attention: off (llama-cpp-python's default), on, or both")
    ap.add_argument("--skip", default="", help="contenders to leave out: moec,transformers,llama.cpp")
    ap.add_argument("--quiet-load", type=float, default=0.7, help="wait for a 1-minute load average at most this")
    ap.add_argument("--max-wait", type=float, default=1200, help="seconds of waiting for quiet, in all")
    ap.add_argument("--moec", default=os.path.join("target", "release", "moec"))
    ap.add_argument("--data-dir", default=os.path.join("target", "bench-data"))
    ap.add_argument("--md", default=os.path.join("benches", "BENCHMARKS.md"))
    ap.add_argument("--note", default="", help="a remark written under the section title")
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the perf profile of moec's prefill and decode")
    # worker mode (the script runs itself once per contender, so runtimes never share a process)
    ap.add_argument("--worker", choices=["torch", "llama"], help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--generate-check", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "torch":
        return worker_torch(args)
    if args.worker == "llama":
        return worker_llama(args)
    if args.quick:
        args.prompt_len, args.new_tokens, args.repeats, args.warmup = 64, 8, 1, 0
        args.experts, args.llama_fa, args.no_write, args.max_wait, args.profile = "eager", "off", True, 0, False
    dtypes = args.dtypes.split(",")
    quants = [q for q in args.quants.split(",") if q]
    impls = [e for e in args.experts.split(",") if e]
    skip = set(filter(None, args.skip.split(",")))

    moec = os.path.join(REPO, args.moec) if not os.path.isabs(args.moec) else args.moec
    if not os.path.exists(moec):
        log(f"{moec} missing: cargo build --release")
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    data = os.path.join(REPO, args.data_dir)
    os.makedirs(data, exist_ok=True)
    quiet = Quiet(args.quiet_load, args.max_wait)
    ckpt = dict(zip(DTYPES, build_checkpoints(data, args.seed)))

    lver = None if "llama.cpp" in skip else llama_version()
    gguf = {}
    if lver:
        src = llama_cpp_source(data, lver)
        for d in dtypes:
            gguf[d] = os.path.join(data, f"mixtral_bench_{d}.gguf")
            convert_gguf(src, ckpt[d], gguf[d], d)
        if quants:
            f32_gguf = os.path.join(data, "mixtral_bench_f32.gguf")
            convert_gguf(src, ckpt["f32"], f32_gguf, "f32")
            for q in quants:
                gguf[q] = os.path.join(data, f"mixtral_bench_{q}.gguf")
                quantize_gguf(f32_gguf, gguf[q], q)
    elif "llama.cpp" not in skip:
        log("llama_cpp is not importable (pip install -r benches/requirements.txt): no llama.cpp rows")

    results, commands = {}, []  # results[(dtype, contender)] = {...}
    common = ["--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--repeats",
              str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]

    spec_how = None
    if "moec" not in skip:
        spec, sets, spec_how = moec_spec(moec, data, ckpt["f32"])
        log(f"moec: {spec_how}")
        for d in dtypes:
            quiet.wait(f"moec {d}")
            load = loadavg()
            res, shown = run_moec(moec, spec, sets, ckpt[d], [], args)
            # The CPU backend packs bf16 panels for every matmul whose weights are all bf16 values.
            res.update(load=load, weight_dtype=d)
            results[(d, "moec")] = res
            commands.append(shown)
        for q in quants:
            quiet.wait(f"moec {q}")
            load = loadavg()
            res, shown = run_moec(moec, spec, sets, ckpt["f32"], ["--weight-format", q], args)
            res.update(load=load, weight_dtype=q)
            results[(q, "moec")] = res
            commands.append(shown)
        for d in dtypes:
            if d == "bf16" and "amx" in sh([moec, "generate", "--help"]).stdout and amx_available():
                quiet.wait("moec amx bf16")
                load = loadavg()
                res, shown = run_moec(moec, spec, sets, ckpt[d], ["--matmul-isa", "amx"], args)
                res.update(load=load, weight_dtype=d)
                results[(d, "moec amx")] = res
                commands.append(shown)

    contenders = [] if "transformers" in skip else [(f"transformers {i}", "torch", i) for i in impls]
    if lver:
        contenders += [("llama.cpp" + ("" if fa == "off" else " flash-attn"), "llama",
                        "flash-attn" if fa == "on" else "off") for fa in args.llama_fa.split(",") if fa]
    # Quantized formats: llama.cpp only (transformers has no q8_0 / q4_0 CPU path), flash attention off.
    plans = [(d, contenders) for d in dtypes]
    plans += [(q, [c for c in contenders if c[1] == "llama" and c[2] == "off"]) for q in quants if q in gguf]
    for d, these in plans:
        for name, kind, impl in these:
            cmd = [sys.executable, SCRIPT, "--worker", kind, "--dtype", d, *common]
            if kind == "torch":
                cmd += ["--ckpt", ckpt[d], "--impl", impl] + (["--generate-check"] if not args.quick else [])
            else:
                cmd += ["--gguf", gguf[d], "--impl", impl]
            quiet.wait(f"{name} {d}")
            load = loadavg()
            res = sh(cmd)
            sys.stdout.write("".join(l + "\n" for l in res.stdout.splitlines() if l.startswith("  run")))
            out = result_line(res.stdout)
            out["load"] = load
            results[(d, name)] = out

    bw = bw_threads = None
    profiles = {}
    if "moec" not in skip:
        quiet.wait("moec bench --bandwidth")
        bench = ["bench", BLOCK_SPEC, "--set", f"hidden_size={DIMS['hidden_size']}", "--set",
                 f"intermediate_size={DIMS['intermediate_size']}", "--tokens", "1", "--repeats", "3", "--threads",
                 str(args.threads), "--json", "--no-dense", "--bandwidth"]
        lines = json_lines(sh([moec, *bench]).stdout)
        bw = next((r["read_gbps"] for r in lines if r.get("backend") == "memory"), None)
        bw_threads = next((r.get("threads") for r in lines if r.get("backend") == "memory"), None)
        commands.append("moec " + quote(bench))
        if args.profile and shutil.which("perf"):
            for d in dtypes:
                quiet.wait(f"perf moec {d}")
                profiles[d] = profile_moec(moec, spec, sets, ckpt[d], args, data, d)
        elif args.profile:
            log("perf not found: no profile of moec")

    # ----------------------------------------------------------------- tables
    names = (["moec", "moec amx"] if "moec" not in skip else []) + [c[0] for c in contenders]
    head = ["precision", "contender", f"prefill({args.prompt_len}) tok/s", "decode tok/s",
            "moec/this prefill", "moec/this decode", "decode weight GB/s", "% of read BW", "ids = tf eager",
            "ids = moec", "load avg"]
    rows, summary = [], {}
    for d in dtypes + quants:
        m = results.get((d, "moec"))
        ref = results.get((d, "transformers eager"))
        for name in names:
            r = results.get((d, name))
            if r is None:
                continue
            pre, dec = med(r["runs"], "prefill"), med(r["runs"], "decode")
            step = weight_bytes_per_decode_token(BYTES[r.get("weight_dtype", d)])
            gbs = step * dec / 1e9
            same = f"{agree(r['runs'][0]['ids'], ref['runs'][0]['ids'])}/{args.new_tokens}" if ref else "—"
            same_m = f"{agree(r['runs'][0]['ids'], m['runs'][0]['ids'])}/{args.new_tokens}" if m else "—"
            mp = med(m["runs"], "prefill") if m else None
            md_ = med(m["runs"], "decode") if m else None
            rows.append([
                d, name,
                f"{pre:.1f}", f"{dec:.2f}",
                "—" if name == "moec" or mp is None else f"{mp / pre:.2f}×",
                "—" if name == "moec" or md_ is None else f"{md_ / dec:.2f}×",
                f"{gbs:.1f}", fmt(100 * gbs / bw if bw else None, ".0f", "%"), same, same_m, f"{r['load']:.2f}",
            ])
            summary[f"{d} {name}"] = dict(prefill=pre, decode=dec, weight_gbps=gbs, prefill_spread=spread(r["runs"], "prefill"),
                                          decode_spread=spread(r["runs"], "decode"), load=r["load"])

    t_head = ["target"] + dtypes + [q for q in quants if (q, "moec") in results]
    t_rows = []
    if "moec" not in skip:
        row1, row2, row3 = ["decode ≥ llama.cpp (its faster row)"], [f"decode weight stream ≥ {TARGET_BW:.0%} of read BW"], \
            [f"prefill({args.prompt_len}) ≥ {TARGET_PREFILL}× faster transformers"]
        for d in t_head[1:]:
            m = summary.get(f"{d} moec")
            lc = [summary[k] for k in summary if k.startswith(f"{d} llama.cpp")]
            l = max(lc, key=lambda s: s["decode"]) if lc else None
            row1.append("—" if not (m and l) else
                        f"{m['decode'] / l['decode']:.2f}× " + ("met" if m["decode"] >= l["decode"] else "**missed**"))
            row2.append("—" if not (m and bw) else
                        f"{m['weight_gbps'] / bw:.0%} " + ("met" if m["weight_gbps"] >= TARGET_BW * bw else "**missed**"))
            tf = [summary[k] for k in summary if k.startswith(f"{d} transformers")]
            if m and tf:
                best = max(tf, key=lambda s: s["prefill"])
                ratio = m["prefill"] / best["prefill"]
                row3.append(f"{ratio:.2f}× " + ("met" if ratio >= TARGET_PREFILL else "**missed**"))
            else:
                row3.append("—")
        t_rows = [row1, row2, row3]

    bytes_note = {d: weight_bytes_per_decode_token(BYTES[d]) for d in DTYPES}
    log()
    if bw:
        log(f"memory read bandwidth: {bw:.1f} GB/s ({bw_threads} threads)")
    log(plain(head, rows))
    if t_rows:
        log()
        log(plain(t_head, t_rows))
    for s in quiet.log:
        log(f"  {s['section']}: load average {s['load']:.2f} after waiting {s['waited_s']} s"
            + ("" if s["quiet"] else " (never quiet)"))

    p_head, p_rows = profile_table(profiles)
    if p_rows:
        log()
        log("moec, share of samples by part (perf):")
        log(plain(p_head, p_rows))

    with open(os.path.join(data, "compare_models.json"), "w") as f:
        json.dump(dict(summary=summary, bandwidth_gbps=bw, profiles=profiles, quiet=quiet.log,
                       results={f"{k[0]} {k[1]}": v for k, v in results.items()}), f, indent=1)
    if args.no_write:
        return

    # ----------------------------------------------------------------- markdown
    cpu, mach = machine()
    moec_version = sh([moec, "--version"]).stdout.strip()
    try:
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rustc = "rustc: not found"
    tf = next((v for k, v in results.items() if k[1].startswith("transformers")), None)
    ll = next((v for k, v in results.items() if k[1].startswith("llama.cpp")), None)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    versions = [moec_version + f" at commit {commit} ({rustc})"]
    if tf:
        versions.append(f"torch {tf['torch']}, transformers {tf['transformers']}")
    if ll:
        versions.append(f"llama-cpp-python {ll['llama_cpp_python']} (its vendored llama.cpp, built from source "
                        "with `-march=native`)")
    versions.append(f"Python {platform.python_version()}")
    today = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    loads = ", ".join(f"{s['section']} {s['load']:.2f}" for s in quiet.log)
    noisy = [s["section"] for s in quiet.log if not s["quiet"]]
    script_cmd = ".venv/bin/python " + quote([SCRIPT, *sys.argv[1:]])
    gen_ok = all(v.get("generate_ids_match", True) for v in results.values())
    md = [f"## {SECTION}", ""]
    if args.note:
        md += [f"**Note:** {args.note}", ""]
    md += [
        f"Written by `{SCRIPT}` (see `benches/README.md`). `MixtralForCausalLM`: {DIMS['num_hidden_layers']} layers, "
        f"hidden {DIMS['hidden_size']}, intermediate {DIMS['intermediate_size']}, {DIMS['num_local_experts']} experts "
        f"top-{DIMS['num_experts_per_tok']}, {DIMS['num_attention_heads']} attention heads over "
        f"{DIMS['num_key_value_heads']} KV heads (head_dim {DIMS['head_dim']}), vocab {DIMS['vocab_size']}; random "
        f"weights (seed {args.seed}), 1.75 GB in f32, 0.88 GB in bf16 (`save_pretrained` into "
        "`target/bench-data/mixtral_bench_{f32,bf16}/`, GGUF files from llama.cpp's `convert_hf_to_gguf.py`). "
        f"Prompt: {args.prompt_len} ids; then {args.new_tokens} greedy new tokens.",
        "",
        f"- CPU: **{cpu}** ({mach}). Date: {today}.",
        "- Versions: " + "; ".join(versions) + ".",
        f"- Threads: {args.threads} for every contender: torch `set_num_threads({args.threads})`, llama.cpp "
        f"`n_threads = n_threads_batch = {args.threads}`; `moec generate` has no thread option and runs one worker "
        f"per core ({os.cpu_count()} cores).",
        f"- Memory read bandwidth: {fmt(bw, '.1f')} GB/s (`moec bench --bandwidth`, {bw_threads} threads, "
        "streaming read of 1 GiB).",
        f"- Times: median of {args.repeats} runs after {args.warmup} warm-up run(s), each contender in its own "
        "process. prefill tok/s = prompt tokens / (the prompt's forward + choosing the first id); decode tok/s = "
        f"({args.new_tokens} − 1) / (the later single-token steps) — `moec generate`'s own definition, measured "
        "the same way (wall clock) for transformers (a forward over the prompt with a `DynamicCache` and "
        "`logits_to_keep=1`, as `generate` does, then single-token forwards; "
        + ("same ids as `model.generate(do_sample=False)`" if gen_ok else "**ids differ from `model.generate`**")
        + ") and llama.cpp (`Llama.eval`, the prompt in one batch of 512, KV cache f16 (its default), flash "
        "attention off (llama-cpp-python's default) or on (the `flash-attn` rows); the GGUF file's tensors are "
        "those of the checkpoint, norms and router in f32). moec's numbers are the ones "
        "`moec generate --json` prints (one process per run: a cold session each time).",
        f"- 1-minute load average when each section started (threshold {args.quiet_load}, polled every 30 s): "
        f"{loads}." + (f" **Never quiet for: {', '.join(noisy)}**." if noisy else ""),
        f"- moec: {spec_how}." if spec_how else None,
        "- Command: `" + script_cmd + "`, which ran:",
    ]
    md += [f"  - `{c}`" for c in commands]
    md += ["", markdown(head, rows), ""]
    md += [
        "moec/this: moec's tokens/s over the row's (above 1: moec is faster). decode weight GB/s: weight bytes one "
        f"decode step reads — attention, router and norms of every layer, 2 of 8 experts per layer, one embedding "
        f"row, lm_head: {bytes_note['f32'] / 1e6:.0f} MB in f32, {bytes_note['bf16'] / 1e6:.0f} MB in bf16 (KV cache "
        "not counted) — times decode tok/s; % of read BW: of the measured bandwidth (the L3 can hold part of "
        "what one step reads, so this can pass 100%). ids = tf eager / ids = moec: how many of the first new ids "
        "equal transformers eager's / moec's at the same precision (random weights give small logit gaps, so "
        "bf16 rounding soon changes a choice: transformers rounds every activation to bf16, moec keeps them "
        "f32, except `moec amx`, which rounds the activations of its many-row bf16 matmuls, i.e. at prefill).",
    ]
    md.append("")
    if quants:
        md.append("")
        md.append("Quantized rows: moec runs the f32 checkpoint with `--weight-format q8_0|q4_0` (every matmul's "
                  "weights but the routers' quantized at load into GGUF's 32-value blocks: experts, attention, "
                  "lm_head; activations quantized per 32-value block to 8 bits, dot products with AVX512-VNNI; "
                  "norms, routers and the embedding table stay f32), llama.cpp a GGUF quantized by its own "
                  "`llama_model_quantize` from the f32 GGUF (every matrix in that format; its matmuls also "
                  "quantize activations to q8 blocks). decode weight GB/s counts the format's bytes (q8_0: 34 "
                  "bytes per 32 weights, q4_0: 18).")
        md.append("")
    md.append("moec loads a checkpoint one matmul at a time; every matmul whose weights are all bf16 tensors of "
              "the checkpoint (here all of them, lm_head and router included) stays bf16: its panels are packed "
              "bf16 (each tensor is widened to f32 only while it is packed), so its bf16 row streams bf16 weights; "
              "the embedding table and the norms are held in f32 (one embedding row per token).")
    if t_rows:
        md += ["", "Targets:", "", markdown(t_head, t_rows, left=1)]
    if p_rows:
        md += ["", f"Where moec's time goes: `perf record` of `moec generate` (same prompt; decode: {PROFILE_NEW} new tokens, "
               "sampling started 1.5 s after load and prefill took in a first run; prefill: the last part of a one-new-token run, as long as "
               "its prefill). Share of samples by part (JIT kernels are named by shape: `matmul_k1024_n7168_glu_silu` "
               "= experts' gate and up, `..._weighted` = experts' down, `n32000` = lm_head, the other `matmul_` "
               "= q/k/v/o and router; AVX-512 / AMX tiles = the `std::arch` / AMX sums that hosts with AVX-512 "
               "use for every matmul, followed by the JIT epilogue kernels (`..._epilogue`); `gemm` = the gemm crate of "
               "the portable path; kernel = page faults, scheduling):", "",
               markdown(p_head, p_rows, left=1)]
    md += findings(summary, profiles, bw, dtypes, args)
    md.append("")
    write_section(os.path.join(REPO, args.md), "compare_models.py", "\n".join(line for line in md if line is not None))
    log(f"\nwrote the section \"{SECTION}\" of {args.md}")


if __name__ == "__main__":
    main()
