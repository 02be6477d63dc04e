"""Train the EAGLE-style draft head (:class:`mmgen.models.drafter.Drafter`) for a shipped generator.

    python -m mmgen.train.train_drafter --model assets/scenes-t2i --out assets/scenes-t2i-drafter
    python -m mmgen.train.train_drafter --model assets/digits-c2i --out assets/digits-c2i-drafter

Data are **self-distilled** (as LANTERN's ``generate_train_data.py``): the generator samples
``--num-samples`` images with AR decoding at the pipeline defaults (CFG ``--guidance``,
temperature 1, no top-k), scenes on training captions, digits on uniform classes. Each step
teacher-forces the frozen generator on a batch of those sequences with the real condition and
with the null condition (``generator_features``) and fits the head with EAGLE's losses:
SmoothL1 between predicted and real features (conditional and unconditional) plus ``--p-weight``
(0.1, LANTERN's ``p_w``) times the cross-entropy against the generator's own next-token
distributions. Input features get uniform noise of width ``--noise`` (0.2, as the reference
trainer). AdamW lr 1e-4 -> here 1e-3 (far fewer steps), warm-up 3 %, grad clip 0.5. Stops after
``--max-minutes`` (default 8, wall time **including** self-distillation: scenes spends ~3-4 min of it
sampling 1024 sequences on one thread; the shipped digits head used 2048 samples, 57 s) or ``--steps``. Output: ``save_pretrained`` folder (safetensors) +
``training.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from ..assets import model_path
from ..decoding import SamplingConfig, get_decoder
from ..models import Condition
from ..models.drafter import Drafter, generator_features
from ..records import command_line
from .common import atomic_dir, check_train_args, set_threads


@torch.no_grad()
def self_distill(pipe, n: int, guidance: float, batch: int, seed: int):
    """-> tokens (n, N) and the conditions used (scenes: captions; digits: labels)."""
    gen = pipe.transformer
    g = torch.Generator().manual_seed(seed)
    toks, conds = [], []
    if not gen.is_class_conditional:
        from ..data import SceneDataset

        ds = SceneDataset(n, seed=1)  # training captions (the eval prompts use another seed)
    for s in range(0, n, batch):
        e = min(n, s + batch)
        if gen.is_class_conditional:
            labels = torch.randint(gen.config.num_classes, (e - s,), generator=g)
            cond = Condition(class_labels=labels)
            conds.append(labels)
        else:
            caps = [ds.spec(i).caption() for i in range(s, e)]
            cond = pipe.encode_condition(prompt=caps)
            conds.append(cond)
        state = gen.prefill(cond, guidance_scale=guidance)
        toks.append(get_decoder("ar").decode(gen, state, SamplingConfig(), g).tokens)
    return torch.cat(toks), conds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-samples", type=int, default=1024)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--p-weight", type=float, default=0.1)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--max-minutes", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    check_train_args(args)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    from ..pipelines import ARImagePipeline

    pipe = ARImagePipeline.from_pretrained(model_path(args.model))
    gen = pipe.transformer.eval().requires_grad_(False)
    c = gen.config
    tokens, conds = self_distill(pipe, args.num_samples, args.guidance, 256, args.seed)
    if gen.is_class_conditional:
        labels = torch.cat(conds)
    else:
        feats = torch.cat([cd.text_features for cd in conds])
        masks = torch.cat([cd.text_mask for cd in conds])
    t_data = time.time() - t_start
    print(f"self-distilled {len(tokens)} sequences in {t_data:.0f}s", flush=True)

    dr = Drafter(dim=c.dim, n_heads=c.n_heads, vocab_size=c.vocab_size)
    opt = torch.optim.AdamW(dr.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    n_tok = gen.num_tokens
    pos = torch.arange(n_tok)
    warm = max(1, int(0.03 * args.steps))
    step, log = 0, []
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for grp in opt.param_groups:
            grp["lr"] = lr
        idx = torch.randint(len(tokens), (args.batch,), generator=g)
        x = tokens[idx]  # (b, N)
        if gen.is_class_conditional:
            cond = Condition(class_labels=labels[idx])
        else:
            cond = Condition(text_features=feats[idx], text_mask=masks[idx])
        drop = torch.ones(args.batch, dtype=torch.bool)
        hc, lc = generator_features(gen, x, cond)  # (b, N, d), (b, N, V): hc[:, t] predicts x_t
        hu, lu = generator_features(gen, x, cond, drop)
        noisy = hc + (torch.rand(hc.shape, generator=g) - 0.5) * args.noise
        fc, fu = dr(gen, noisy, x, pos.expand(args.batch, -1))  # (b, N, d): predicts h_t -> x_{t+1}
        fc, fu = fc[:, :-1], fu[:, :-1]  # the last position has no target
        tc, tu = hc[:, 1:], hu[:, 1:]
        v_loss = F.smooth_l1_loss(fc, tc) + F.smooth_l1_loss(fu, tu)
        pc, pu = lc[:, 1:].softmax(-1), lu[:, 1:].softmax(-1)
        p_loss = -(pc * gen.output(fc).float().log_softmax(-1)).sum(-1).mean() \
            - (pu * gen.output(fu).float().log_softmax(-1)).sum(-1).mean()
        loss = v_loss + args.p_weight * p_loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dr.parameters(), 0.5)
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                acc = (gen.output(fc).argmax(-1) == lc[:, 1:].argmax(-1)).float().mean().item()
            log.append({"step": step, "loss": round(loss.item(), 4), "v_loss": round(v_loss.item(), 4),
                        "p_loss": round(p_loss.item(), 4), "top1_agreement": round(acc, 4)})
            print(json.dumps(log[-1]), flush=True)
        if time.time() - t_start > 60 * args.max_minutes:
            break
    info = {"model": str(args.model), "steps": step + 1, "batch": args.batch, "num_samples": len(tokens),
            "guidance": args.guidance, "final": log[-1] if log else None, "self_distill_seconds": round(t_data, 1),
            "train_seconds": round(time.time() - t_start, 1), "threads": torch.get_num_threads(),
            "command": command_line("python -m mmgen.train.train_drafter", argv)}
    with atomic_dir(args.out) as out:
        dr.save_pretrained(out)
        (out / "training.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
