"""Decode throughput: static KV cache vs recomputing the whole prefix each step vs transformers'
``LlamaForCausalLM.generate`` (DynamicCache) at an equal size, measured side by side, interleaved.

    python benchmarks/bench_decode.py --model scenes-t2i --batch 1 8 --repeats 3 --threads 1

Greedy decoding everywhere, so the static-cache and recompute paths must emit identical tokens
(checked and reported: that is their quality figure). The Llama model has the same width, depth,
heads, FFN size, vocabulary and prefix length but random weights: it is a speed reference only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import torch

from mmgen.assets import model_path
from mmgen.decoding import SamplingConfig, get_decoder
from mmgen.models import Condition
from mmgen.models.ar_transformer import ffn_hidden
from mmgen.pipelines import ARImagePipeline
from mmgen.pipelines.batch import atomic_write_json
from mmgen.train.common import set_threads


def condition_for(pipe, batch: int) -> Condition:
    if pipe.is_class_conditional:
        return pipe.encode_condition(class_labels=[i % 10 for i in range(batch)])
    return pipe.encode_condition(prompt=["a large green square in the center, white background"] * batch)


@torch.no_grad()
def static_cache(model, cond):
    state = model.prefill(cond)
    return get_decoder("ar").decode(model, state, SamplingConfig(do_sample=False)).tokens


@torch.no_grad()
def recompute(model, cond):
    b, n = cond.batch_size, model.num_tokens
    tokens = torch.zeros(b, n, dtype=torch.long)
    for i in range(n):
        # model(...) drops the last input token, so append a placeholder: logits[:, i] predicts token i
        logits = model(torch.cat([tokens[:, :i], tokens[:, :1]], 1), cond)[:, -1]
        tokens[:, i] = logits.argmax(-1)
    return tokens


def llama_like(model):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=ffn_hidden(c.dim),
                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_heads,
                      max_position_embeddings=c.prefix_len + model.num_tokens + 8, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def hf_generate(llama, prefix_len: int, n: int, batch: int):
    ids = torch.ones(batch, prefix_len, dtype=torch.long)
    out = llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[:, prefix_len:]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="scenes-t2i")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    pipe = ARImagePipeline.from_pretrained(model_path(args.model))
    model = pipe.transformer.eval()
    llama = llama_like(model)
    n = model.num_tokens
    rows = []
    for b in args.batch:
        cond = condition_for(pipe, b)
        times = {"static_cache": [], "recompute": [], "hf_llama_generate": []}
        identical = True
        for _ in range(args.repeats):  # interleaved so machine noise hits every method alike
            t = time.perf_counter(); a = static_cache(model, cond); times["static_cache"].append(time.perf_counter() - t)
            t = time.perf_counter(); r = recompute(model, cond); times["recompute"].append(time.perf_counter() - t)
            t = time.perf_counter(); hf_generate(llama, model.config.prefix_len, n, b)
            times["hf_llama_generate"].append(time.perf_counter() - t)
            identical &= torch.equal(a, r)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"batch": b, "tokens_per_image": n,
               **{f"{k}_tok_per_s": round(b * n / v, 1) for k, v in med.items()},
               "speedup_static_vs_recompute": round(med["recompute"] / med["static_cache"], 2),
               "speedup_static_vs_hf_generate": round(med["hf_llama_generate"] / med["static_cache"], 2),
               "static_equals_recompute_tokens": identical}
        rows.append(row)
        print(json.dumps(row))
    meta = {"model": args.model, "params": sum(p.numel() for p in model.parameters()), "threads": threads,
            "torch": torch.__version__, "machine": f"{platform.machine()} {platform.processor() or ''} CPU".strip(),
            "date": str(date.today()), "repeats": args.repeats}
    print(json.dumps(meta))
    if args.json:
        atomic_write_json(args.json, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
