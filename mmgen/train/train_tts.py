"""Train the AR text-to-speech generator (with MCTP modules) on codec tokens of the eSpeak corpus.

    python -m mmgen.train.train_tts --corpus data/speech --tokenizers assets/speech-tokenizers --out assets/tts

Writes a :class:`~mmgen.pipelines.speech.SpeechPipeline` folder (transformer + codec, safetensors).
Loss = CE(backbone) + ``--mctp-weight`` * mean_i CE(MCTP module i), on every level of every step
of the delayed grid except the forced PAD slots; the modules train jointly with the backbone
(VITA-Audio trains them in frozen-backbone stages; see ``mmgen/models/speech_transformer.py``).
Single process (accelerate), resumable from ``--work``.

``--input semantic --semantic-tokenizer assets/speech-ctc`` trains the dual-token model instead
(DualSpeechLM idea): the prefix is the CTC semantic tokens of the same utterance, the output its codec
tokens; the export is a :class:`~mmgen.pipelines.speech.DualTokenSpeechPipeline` (speech in, speech out
in a chosen voice).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm

from ..audio.codec import MelRVQCodec
from ..audio.corpus import ALPHABET, VOICES, load_corpus
from ..audio.dual import CTCSpeechTokenizer
from ..audio.features import log_mel
from ..models.speech_transformer import SpeechTransformer
from ..pipelines.speech import DualTokenSpeechPipeline, SpeechPipeline, semantic_to_ids, text_to_ids
from ..records import command_line
from .common import (SegmentLog, atomic_dir, check_resumable, check_train_args, cosine_lr, data_stream, resume_or_start,
                     save_checkpoint, set_threads)


@torch.no_grad()
def corpus_codes(codec: MelRVQCodec, corpus: str, levels: int, semantic: CTCSpeechTokenizer | None = None) -> list[dict]:
    """Training items: text, voice, codec codes (M, F) and, with ``semantic``, its tokens (T',)."""
    items = []
    for r in load_corpus(corpus, "train"):
        audio = torch.from_numpy(r["audio"])
        codes = codec.encode_mel(log_mel(audio[None], codec.mel_cfg))[0, :levels]
        item = dict(text=r["text"], voice=r["voice"], codes=codes)  # codes (M, F)
        if semantic is not None:
            item["semantic"] = semantic.encode(audio)[0]  # (T',)
        items.append(item)
    return items


def make_batch(model: SpeechTransformer, items: list[dict], idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> text ids (B, Tt), voices (B,), delayed grids (B, S, M) END-padded, valid mask (B, S, M)."""
    if model.config.input_kind == "semantic":
        ids = semantic_to_ids([items[i]["semantic"] for i in idx], model.config.max_text_len)
    else:
        ids = text_to_ids([items[i]["text"] for i in idx], model.config.max_text_len)
    voices = torch.tensor([model.voice_index(items[i]["voice"]) for i in idx])
    grids = [model.delay(items[i]["codes"]) for i in idx]
    s = max(g.shape[0] for g in grids)
    steps = torch.full((len(idx), s, model.num_levels), model.END, dtype=torch.long)
    valid = torch.zeros(len(idx), s, model.num_levels, dtype=torch.bool)
    for b, g in enumerate(grids):
        steps[b, :g.shape[0]] = g
        valid[b, :g.shape[0]] = g != model.PAD
    return ids, voices, steps, valid


def tts_loss(model, ids, voices, steps, valid, mctp_weight: float) -> tuple[torch.Tensor, list[float]]:
    outs = model(ids, voices, steps)
    losses = []
    for i, logits in enumerate(outs):  # module i predicts steps i..S-1
        tgt, m = steps[:, i:], valid[:, i:]
        losses.append(F.cross_entropy(logits[m], tgt[m]))
    total = losses[0] + (mctp_weight * torch.stack(losses[1:]).mean() if len(losses) > 1 else 0.0)
    return total, [round(x.item(), 4) for x in losses]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/speech")
    ap.add_argument("--tokenizers", default="assets/speech-tokenizers")
    ap.add_argument("--out", default="assets/tts")
    ap.add_argument("--work", default="runs/train_tts")
    ap.add_argument("--levels", type=int, default=2, help="codec RVQ levels the generator models")
    ap.add_argument("--input", choices=("text", "semantic"), default="text",
                    help="prefix: characters (TTS) or CTC semantic tokens of the utterance (dual-token model)")
    ap.add_argument("--semantic-tokenizer", default="assets/speech-ctc", help="CTC tokenizer folder for --input semantic")
    ap.add_argument("--mctp", type=int, default=4, help="tokens per backbone forward at most (modules = mctp - 1)")
    ap.add_argument("--mctp-weight", type=float, default=1.0)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop early (and export) after this long")
    args = ap.parse_args(argv)
    check_train_args(args)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    work = Path(args.work)
    codec = MelRVQCodec.from_pretrained(Path(args.tokenizers) / "codec").eval()
    if not 1 <= args.levels <= codec.num_quantizers:
        raise ValueError(f"--levels must be in [1, {codec.num_quantizers}], got {args.levels}")
    t0 = time.time()
    semantic = CTCSpeechTokenizer.from_pretrained(args.semantic_tokenizer).eval() if args.input == "semantic" else None
    items = corpus_codes(codec, args.corpus, args.levels, semantic)
    prefix = dict(text_vocab_size=len(ALPHABET) + 1) if semantic is None else dict(
        text_vocab_size=semantic.codebook_size + 1, input_kind="semantic",
        max_text_len=max(len(it["semantic"]) for it in items) + 32)
    model = SpeechTransformer(voices=tuple(VOICES), num_quantizers=args.levels, codebook_size=codec.codebook_size,
                              dim=args.dim, n_layers=args.layers, n_heads=args.heads, mctp=args.mctp, dropout=0.1,
                              **prefix)
    model, opt, step = resume_or_start(work, "transformer", model, lambda m: torch.optim.AdamW(
        m.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01))
    check_resumable(step, args.steps, work)
    model, opt = acc.prepare(model, opt)
    rng, states = data_stream(work, args.seed, step)  # restored on resume
    log = SegmentLog(work, step, command_line("python -m mmgen.train.train_tts", argv), started=t0)
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, disable=not acc.is_main_process)
    parts = []
    for step in bar:
        model.train()
        cosine_lr(opt, args.lr, step, args.steps, warmup=100)
        batch = make_batch(acc.unwrap_model(model), items, rng.integers(len(items), size=args.batch))
        loss, parts = tts_loss(model, *[t.to(acc.device) for t in batch], args.mctp_weight)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}", main=parts[0])
        stop = args.max_minutes is not None and time.time() - t0 > 60 * args.max_minutes
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps or stop:
            save_checkpoint(work, {"transformer": acc.unwrap_model(model)}, opt, step + 1, extra=log.state(step + 1),
                            rng=states)
        if stop:
            break
    model = acc.unwrap_model(model).eval()
    info = dict(steps_done=step + 1, final_losses=parts, threads=torch.get_num_threads(), **log.record(step + 1))
    if acc.is_main_process:
        with atomic_dir(args.out) as tmp:
            if semantic is None:
                SpeechPipeline(transformer=model, codec=codec).save_pretrained(tmp)
            else:
                DualTokenSpeechPipeline(transformer=model, codec=codec, semantic_tokenizer=semantic).save_pretrained(tmp)
            (tmp / "training.json").write_text(json.dumps(info, indent=2))
        print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
