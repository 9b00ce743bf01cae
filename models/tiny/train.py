"""Train the tiny Mixtral checkpoint in models/tiny/ (the README's first command generates with it).

What it does
    1. Corpus: the CPython standard library's own `.py` sources, found from
       `sysconfig.get_paths()["stdlib"]` (walked in sorted order; site-packages, the test suites,
       idlelib/turtledemo, encodings/pydoc_data tables, lib2to3 and ensurepip are skipped). Every file
       is followed by `<|endoftext|>`. Every VAL_EVERY-th file (in that order) is held out for
       validation. The corpus therefore depends on the Python that runs this script: the one used
       is recorded (version and corpus sha256) in train_log.txt.
    2. Tokenizer: byte-level BPE, vocabulary VOCAB, trained with the `tokenizers` package on the
       training files; id 0 is `<|endoftext|>` (the eos, also used as bos; prompts carry no bos).
    3. Model: `MixtralForCausalLM` (4 layers, hidden 128, intermediate 256, 8 experts top-2,
       4 query heads / 2 key-value heads of 32 dims, rope theta 1e6, untied lm_head, router aux
       loss on), trained with AdamW (warmup then cosine decay) for STEPS steps of BATCH random
       windows of SEQ tokens (fixed seed), 2 torch threads.
    4. Every EVAL_EVERY steps and at the end: validation loss, and the checkpoint is saved in
       bfloat16 into this directory (config.json, model.safetensors, generation_config.json,
       tokenizer.json), so an interrupted run still leaves a usable checkpoint. After each save the
       golden data is regenerated from the *saved* checkpoint: expected.json holds transformers'
       greedy ids (`generate(do_sample=False)`, loaded in float32 from the bf16 file) for
       PROMPT with MAX_NEW new tokens, their decoding, and the smallest top-1/top-2 logit gap along
       the way (how robust the greedy path is to float rounding). tests/tiny_model.rs checks moec
       against it.

How long
    The committed checkpoint took 36 min (2166 s) on this project's 2-core machine while three other
    jobs kept it busy (run under `nice -n 19`: 0.16-0.23 steps/s, about 2 CPU-seconds per step), so
    about 10-15 min on 2 idle cores. Steps/s is printed as it trains; losses, timings and each saved
    checkpoint's greedy text are in train_log.txt (committed run: validation loss 4.85 at step 100,
    3.47 at step 500).

Rerun (from the repository root)
    nice -n 19 .venv/bin/python models/tiny/train.py            # train, save, write expected.json
    .venv/bin/python models/tiny/train.py --expected-only       # only regenerate expected.json

Pinned versions: tests/fixtures/requirements.txt (torch 2.15.0 CPU, transformers 5.23.0,
tokenizers 0.23.3, safetensors 0.8.0); the script refuses to run with others.
"""

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import sysconfig
import time

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, MixtralConfig, MixtralForCausalLM

PINNED = {"torch": "2.15.0", "transformers": "5.23.0", "tokenizers": "0.23.3"}

OUT = os.path.dirname(os.path.abspath(__file__))
SEED = 12
VOCAB = 1024
EOS_TOKEN = "<|endoftext|>"
EOS = 0
SKIP_DIRS = {
    "site-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__",
    "encodings", "pydoc_data", "lib2to3", "ensurepip",
}
VAL_EVERY = 40

SEQ = 128
BATCH = 16
STEPS = 500
WARMUP = 30
LR = 3e-3
MIN_LR = 3e-4
WEIGHT_DECAY = 0.1
EVAL_EVERY = 100
EVAL_BATCHES = 8

PROMPT = "def "
MAX_NEW = 32

MODEL = dict(
    vocab_size=VOCAB,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
    output_router_logits=True,
    router_aux_loss_coef=0.02,
    bos_token_id=EOS,
    eos_token_id=EOS,
    pad_token_id=None,
)

LOG_LINES = []


def log(msg):
    print(msg, flush=True)
    LOG_LINES.append(msg)


def check_versions():
    have = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    if have != PINNED:
        sys.exit(f"train.py: pinned versions {PINNED}, found {have} (see tests/fixtures/requirements.txt)")


def stdlib_files():
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".py")]
    return root, out


def load_corpus():
    root, paths = stdlib_files()
    train, val = [], []
    digest = hashlib.sha256()
    for i, p in enumerate(paths):
        with open(p, encoding="utf-8", errors="replace") as f:
            text = f.read()
        digest.update(text.encode("utf-8"))
        (val if i % VAL_EVERY == VAL_EVERY - 1 else train).append(text)
    log(f"python {sys.version.split()[0]}, stdlib {root}: {len(paths)} files "
        f"({len(train)} train, {len(val)} validation), {sum(map(len, train + val))} chars, "
        f"sha256 {digest.hexdigest()[:16]}")
    return train, val


def build_tokenizer(texts):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    assert tok.token_to_id(EOS_TOKEN) == EOS
    return tok


def token_stream(tok, texts):
    ids = []
    for enc in tok.encode_batch(texts):
        ids += enc.ids
        ids.append(EOS)
    return torch.tensor(ids, dtype=torch.long)


def batch(stream, gen, n):
    starts = torch.randint(0, len(stream) - SEQ, (n,), generator=gen)
    return torch.stack([stream[s : s + SEQ] for s in starts.tolist()])


def lr_at(step):
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    t = (step - WARMUP) / max(1, STEPS - WARMUP)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * t))


@torch.no_grad()
def val_loss(model, val, gen):
    model.eval()
    losses = []
    for _ in range(EVAL_BATCHES):
        x = batch(val, gen, BATCH)
        out = model(input_ids=x, labels=x, output_router_logits=False)  # shifted inside the model
        losses.append(out.loss.item())
    model.train()
    return sum(losses) / len(losses)


def save(model, tok):
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16.config.output_router_logits = False
    bf16.save_pretrained(OUT)
    GenerationConfig(bos_token_id=EOS, eos_token_id=EOS, do_sample=False).save_pretrained(OUT)
    tok.save(os.path.join(OUT, "tokenizer.json"))


def write_expected():
    """Greedy ids from the saved bf16 checkpoint loaded in float32 (the test's golden data)."""
    tok = Tokenizer.from_file(os.path.join(OUT, "tokenizer.json"))
    model = MixtralForCausalLM.from_pretrained(OUT, dtype=torch.float32).eval()
    prompt_ids = tok.encode(PROMPT).ids
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            do_sample=False,
            max_new_tokens=MAX_NEW,
            output_scores=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[0, len(prompt_ids) :].tolist()
    gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
    meta = {
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
        "tokenizers": tokenizers.__version__,
        "prompt": PROMPT,
        "prompt_ids": prompt_ids,
        "max_new_tokens": MAX_NEW,
        "eos_token_id": EOS,
        "greedy_ids": new,
        "text": tok.decode(new),
        "min_greedy_gap": min(gaps),
        "notes": "transformers MixtralForCausalLM.generate(do_sample=False) on the bf16 checkpoint loaded "
        "in float32; greedy_ids are the new tokens only (generation stops early at eos), text is their "
        "decoding with tokenizer.json; min_greedy_gap is the smallest top-1 minus top-2 logit along the path.",
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return meta


def train():
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    t0 = time.time()
    train_texts, val_texts = load_corpus()
    tok = build_tokenizer(train_texts)
    train_ids, val_ids = token_stream(tok, train_texts), token_stream(tok, val_texts)
    log(f"tokenizer: vocab {VOCAB}, {len(train_ids)} train / {len(val_ids)} validation tokens "
        f"({time.time() - t0:.0f} s)")

    config = MixtralConfig(**MODEL)
    model = MixtralForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} params; {STEPS} steps x {BATCH} x {SEQ} tokens, AdamW lr {LR} -> {MIN_LR}")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(SEED)
    val_gen_seed = SEED + 1
    model.train()
    t_train = time.time()
    running = None
    for step in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = batch(train_ids, gen, BATCH)
        out = model(input_ids=x, labels=x)  # loss = LM loss + router_aux_loss_coef * aux_loss
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lm = out.loss.item() - MODEL["router_aux_loss_coef"] * out.aux_loss.item()
        running = lm if running is None else 0.95 * running + 0.05 * lm
        done = step + 1
        if done % 10 == 0:
            el = time.time() - t_train
            print(f"step {done}: train loss {running:.3f} (aux {out.aux_loss.item():.3f}), "
                  f"{done / el:.3f} steps/s", flush=True)
        if done % EVAL_EVERY == 0 or done == STEPS:
            vl = val_loss(model, val_ids, torch.Generator().manual_seed(val_gen_seed))
            el = time.time() - t_train
            log(f"step {done}: train loss {running:.3f}, validation loss {vl:.3f}, "
                f"{el:.0f} s, {done / el:.3f} steps/s")
            save(model, tok)
            meta = write_expected()
            log(f"  saved; greedy {PROMPT!r} -> {meta['text']!r} (min gap {meta['min_greedy_gap']:.3f})")
            with open(os.path.join(OUT, "train_log.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(LOG_LINES) + "\n")
    log(f"done: {time.time() - t0:.0f} s in all")
    with open(os.path.join(OUT, "train_log.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(LOG_LINES) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--expected-only", action="store_true", help="only regenerate expected.json")
    args = ap.parse_args()
    check_versions()
    if args.expected_only:
        print(json.dumps(write_expected(), indent=2, ensure_ascii=False))
    else:
        train()


if __name__ == "__main__":
    main()
