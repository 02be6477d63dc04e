"""Speech tokenizers, the TTS generator with MCTP, streaming and the speech pipeline (tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgen.audio import KMeansSpeechTokenizer, MelRVQCodec, log_mel
from mmgen.audio.corpus import ALPHABET, VOICES
from mmgen.audio.semantic import kmeans
from mmgen.models.speech_transformer import SpeechTransformer
from mmgen.pipelines.speech import SpeechPipeline, text_to_ids

K = 16


def tiny_codec(levels: int = 3) -> MelRVQCodec:
    torch.manual_seed(0)
    codec = MelRVQCodec(codebook_size=K, num_quantizers=levels, hidden=32, codebook_dim=8, griffin_lim_iters=4)
    codec.train()
    for _ in range(12):  # k-means initialises each level on its first training batch (levels drop out at random)
        codec(torch.randn(4, 80, 40))
    assert all(bool(layer._codebook.initted) for layer in codec.rvq.layers)
    return codec.eval()


def tiny_tts(mctp: int = 3, levels: int = 2, max_frames: int = 120) -> SpeechTransformer:
    torch.manual_seed(0)
    return SpeechTransformer(text_vocab_size=len(ALPHABET) + 1, voices=VOICES, num_quantizers=levels,
                             codebook_size=K, dim=32, n_layers=2, n_heads=2, mctp=mctp, max_frames=max_frames).eval()


@pytest.fixture(scope="module")
def pipe():
    return SpeechPipeline(transformer=tiny_tts(), codec=tiny_codec())


def test_codec_shapes_bitrate_and_level_dropping():
    codec = tiny_codec()
    wav = torch.randn(2, 16000) * 0.1
    codes = codec.encode(wav)
    assert codes.shape == (2, 3, 16000 // 256 + 1) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < K
    assert codec.frame_rate == 62.5
    assert codec.bitrate() == pytest.approx(62.5 * 3 * 4) and codec.bitrate(1) == pytest.approx(62.5 * 4)
    audio = codec.decode(codes)
    assert audio.shape == (2, codes.shape[-1] * 256) and audio.abs().max() <= 1
    # residual VQ: decoding with fewer levels is allowed and changes the result
    m1, m3 = codec.decode_mel(codes[:, :1]), codec.decode_mel(codes)
    assert m1.shape == m3.shape and not torch.allclose(m1, m3)


def test_codec_save_load_round_trip(tmp_path):
    codec = tiny_codec()
    codec.save_pretrained(tmp_path)
    again = MelRVQCodec.from_pretrained(tmp_path).eval()
    wav = torch.randn(1, 8000) * 0.1
    assert torch.equal(codec.encode(wav), again.encode(wav))


@pytest.mark.parametrize("bad, match", [
    (dict(sample_rate=22050), "sample_rate"),
    (dict(audio=np.zeros(100, np.float32)), "at least 1024"),
    (dict(audio=np.full(4000, np.nan, np.float32)), "NaN"),
])
def test_codec_bad_audio(bad, match):
    codec = tiny_codec()
    args = dict(audio=np.zeros(4000, np.float32), sample_rate=16000) | bad
    with pytest.raises(ValueError, match=match):
        codec.encode(args["audio"], sample_rate=args["sample_rate"])


def test_codec_bad_codes():
    codec = tiny_codec()
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        codec.decode(torch.full((1, 2, 5), K))
    with pytest.raises(ValueError, match="levels"):
        codec.decode(torch.zeros(1, 4, 5, dtype=torch.long))


def test_kmeans_deterministic_and_recovers_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 3, generator=g) * 10
    x = torch.cat([c + 0.1 * torch.randn(50, 3, generator=g) for c in centers])
    a = kmeans(x, 4, generator=torch.Generator().manual_seed(1))
    b = kmeans(x, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.cdist(centers, a).min(1).values.max() < 0.5  # every true centre found
    tok = KMeansSpeechTokenizer(codebook_size=8)
    frames = log_mel(torch.randn(2, 16000) * 0.1)[0].T  # (F, 80)
    tok.fit(frames, generator=torch.Generator().manual_seed(0))
    ids = tok.encode(torch.randn(16000) * 0.1)
    assert ids.shape == (1, 63) and int(ids.max()) < 8
    assert tok.decode(ids).shape == (1, 63 * 256)
    assert tok.bitrate() == pytest.approx(62.5 * 3)


def test_delay_pattern_round_trip():
    model = tiny_tts(levels=3)
    codes = torch.randint(K, (3, 7))
    grid = model.delay(codes)  # (F + M, M)
    assert grid.shape == (10, 3)
    assert grid[0, 1] == model.PAD and grid[1, 2] == model.PAD and grid[7, 0] == model.END
    assert torch.equal(model.undelay(grid), codes)
    assert torch.equal(model.undelay(grid[:6]), codes[:, :4])  # a prefix: only frames with every level


def test_greedy_ar_equals_teacher_forced_argmax():
    """The cached step-by-step path (mctp=1) reproduces the full causal forward."""
    model = tiny_tts()
    ids, v = text_to_ids(["the dog", "a red cat runs"], 200), torch.tensor([0, 2])
    out = model.generate(ids, v, mctp=1, max_frames=30)
    assert out.forward_passes == out.steps.shape[1]  # prefill + one forward per further step
    logits = model(ids, v, out.steps)[0]  # (B, S, M, K + 2)
    for s in range(out.steps.shape[1]):
        end_at = torch.tensor([(g[:, 0] == model.END).nonzero()[0].item() if (g[:, 0] == model.END).any() else 30
                               for g in out.steps[:, :s + 1]])
        end_at = torch.where(end_at == s, torch.full_like(end_at, 30), end_at)  # END emitted at s is a free choice
        assert torch.equal(model._pick(logits[:, s], s, end_at, 0.0, None, None), out.steps[:, s])


def reference_ar(model, ids, v, max_frames, generator, temperature=1.0, top_k=5):
    """Plain AR without a cache: recompute the whole forward for every step."""
    b, m = ids.shape[0], model.num_levels
    steps = torch.zeros(b, 0, m, dtype=torch.long)
    end_at = torch.full((b,), max_frames)
    for s in range(max_frames + m):
        padded = torch.cat([steps, torch.full((b, 1, m), model.END)], 1)
        logits = model(ids, v, padded)[0][:, s]
        tok = model._pick(logits, s, end_at, temperature, top_k, generator)
        end_at = torch.where((tok[:, 0] == model.END) & (end_at > s), torch.full_like(end_at, s), end_at)
        steps = torch.cat([steps, tok[:, None]], 1)
        if bool((s + 1 >= end_at + m).all()):
            break
    return steps


def test_mctp_k1_equals_plain_ar_under_same_seed():
    model = tiny_tts()
    ids, v = text_to_ids(["a cat", "the blue bird"], 200), torch.tensor([1, 0])
    ref = reference_ar(model, ids, v, 25, torch.Generator().manual_seed(7))
    out = model.generate(ids, v, mctp=1, temperature=1.0, top_k=5, max_frames=25,
                         generator=torch.Generator().manual_seed(7))
    assert torch.equal(out.steps, ref)


def test_mctp_modules_match_teacher_forcing_and_cut_forwards():
    model = tiny_tts(mctp=3)
    ids, v = text_to_ids(["the green horse"], 200), torch.tensor([0])
    out = model.generate(ids, v, mctp=3, max_frames=40, min_frames=40)
    s = out.steps.shape[1]
    assert s == 42 and out.steps_per_forward[:-1] == [3] * (len(out.steps_per_forward) - 1)
    assert out.forward_passes == len(out.steps_per_forward) == -(-s // 3)
    outs = model(ids, v, out.steps)  # backbone + 2 module logits, teacher-forced on the generated grid
    end_at = torch.tensor([40])
    for step in range(s):
        i = step % 3  # step produced by module i (0 = backbone) of its forward
        base = step - i
        logits = outs[i][:, base]  # module i's output at the step its chain started from
        assert torch.equal(model._pick(logits, step, end_at, 0.0, None, None, min_frames=40), out.steps[:, step])


def test_vocoder_chunk_schedule():
    from mmgen.audio.features import chunk_span, num_chunks
    assert [chunk_span(i, 32, 8) for i in range(4)] == [(0, 8), (8, 32), (32, 64), (64, 96)]
    assert [chunk_span(i, 32) for i in range(3)] == [(0, 32), (32, 64), (64, 96)]
    for first in (8, 32):
        for n in range(0, 130):  # the spans cover frames 0..n-1 exactly once, no empty piece
            spans = [chunk_span(i, 32, first) for i in range(num_chunks(n, 32, first))]
            covered = [f for a, b in spans for f in range(a, min(b, n))]
            assert covered == list(range(n)) and all(a < n for a, _ in spans)
    # a head piece (the first forward's frames) goes first; the next piece runs to the next regular boundary
    assert [chunk_span(i, 32, 8, 4) for i in range(4)] == [(0, 4), (4, 8), (8, 32), (32, 64)]
    assert [chunk_span(i, 32, 8, 12) for i in range(3)] == [(0, 12), (12, 32), (32, 64)]
    assert [chunk_span(i, 32, 8, 8) for i in range(2)] == [(0, 8), (8, 32)]
    for head in (1, 3, 8, 12, 40):
        for n in range(0, 100):
            spans = [chunk_span(i, 32, 8, head) for i in range(num_chunks(n, 32, 8, head))]
            assert [f for a, b in spans for f in range(a, min(b, n))] == list(range(n))
    for bad, match in [(lambda: chunk_span(0, 32, 8, 0), "head must be >= 1"),
                       (lambda: chunk_span(0, 32, 0), "first must be in"), (lambda: num_chunks(5, 32, 0), "first must be in"),
                       (lambda: num_chunks(5, 0), "chunk must be >= 1"), (lambda: chunk_span(-1, 32, 8), "index must be >= 0")]:
        with pytest.raises(ValueError, match=match):
            bad()


def test_first_chunk_needs_fewer_frames(pipe):
    from mmgen.pipelines.speech import first_chunk_frames
    r = pipe.codec.receptive_radius
    assert [first_chunk_frames(pipe.codec, i) for i in range(3)] == [16 + r, 40 + r, 72 + r]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_first_audio_after_the_first_forward(pipe, k):
    """The head chunk holds the first forward's complete frames (k steps minus the delay pattern's M - 1 = 1
    here), so with k >= M the first audio is out after one forward; the chunks still equal the whole output."""
    from mmgen.pipelines.speech import first_chunk_frames, head_frames

    head = head_frames(k, pipe.transformer.config.num_quantizers)
    assert head == max(1, k - 1) and first_chunk_frames(pipe.codec, 0, head) == head
    kw = dict(mctp=k, min_seconds=1.0, max_seconds=1.2)
    stream = pipe.stream("the red dog follows a cat", **kw)
    first = next(stream)
    assert len(first) == head * 256
    assert stream.first_chunk_forwards == (1 if k >= 2 else 2)  # k = 1: the delay pattern needs a second step
    whole = pipe("the red dog follows a cat", **kw)
    np.testing.assert_allclose(np.concatenate([first] + list(stream)), whole.audios[0, 0, :whole.lengths[0]], atol=1e-5)


def test_streaming_concatenates_to_whole_output(pipe):
    whole = pipe("the red dog follows a cat", min_seconds=1.6, max_seconds=1.9)
    chunks = list(pipe.stream("the red dog follows a cat", min_seconds=1.6, max_seconds=1.9))
    assert len(chunks) >= 3
    audio = np.concatenate(chunks)
    assert audio.shape[0] == whole.lengths[0]
    np.testing.assert_allclose(audio, whole.audios[0, 0, :whole.lengths[0]], atol=1e-5)


def test_pipeline_save_load_and_outputs(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    again = SpeechPipeline.from_pretrained(tmp_path)
    a = pipe(["a cat", "the small dog"], max_seconds=0.5, output_type="pt")
    b = again(["a cat", "the small dog"], max_seconds=0.5, output_type="pt")
    assert a.audios.shape[:2] == (2, 1) and torch.equal(a.audios, b.audios)
    assert a.stats.forward_passes > 0 and a.stats.batch_size == 2 and a.sample_rate == 16000


@pytest.mark.parametrize("kwargs, match", [
    (dict(text=""), "text"),
    (dict(text="héllo"), "text"),
    (dict(text="a" * 201), "text"),
    (dict(text="a cat", voice="robot"), "voice"),
    (dict(text="a cat", mctp=4), "mctp"),
    (dict(text="a cat", mctp=0), "mctp"),
    (dict(text="a cat", max_seconds=0), "max_seconds"),
    (dict(text="a cat", temperature=-1), "temperature"),
    (dict(text="a cat", temperature=1e308), r"temperature must be a number in \[0.0001, 10000\] or 0"),
    (dict(text="a cat", temperature=1e-300), "temperature"),
    (dict(text="a cat", max_seconds="1"), "max_seconds"),
    (dict(text="a cat", min_seconds=None), "min_seconds"),
    (dict(text="a cat", mctp=True), "mctp"),
    (dict(text=None), "text must be"),
    (dict(text=5), "text must be"),
    (dict(text="a cat", output_type="wav"), "output_type"),
])
def test_pipeline_bad_input(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs)


def test_ctc_semantic_tokenizer_shapes_and_greedy_ctc_collapse():
    from mmgen.audio.dual import CTCSpeechTokenizer, DualSpeechTokenizer

    torch.manual_seed(0)
    tok = CTCSpeechTokenizer(hidden=32, codebook_dim=8, codebook_size=K).train()
    logp, ids, commit = tok(torch.randn(2, 80, 40))
    assert logp.shape == (20, 2, len(ALPHABET) + 1) and ids.shape == (2, 20) and torch.isfinite(commit)
    tok.eval()
    sem = tok.encode(torch.randn(16000) * 0.1)
    assert sem.shape == (1, 31) and tok.frame_rate == 31.25 and tok.bitrate() == pytest.approx(31.25 * 4)
    # greedy CTC: repeated symbols collapse, blanks separate: force the head to spell "aab" -> "ab"
    with torch.no_grad():
        last = tok.head[-1]
        last.weight.zero_()
        last.bias.copy_(torch.full((len(ALPHABET) + 1,), -10.0))
    codes = torch.zeros(1, 4, dtype=torch.long)
    for pattern, expect in (([1, 1, 2], "ab"), ([1, 0, 1], "aa")):
        def spell(self, x, pattern=pattern):  # per-frame fixed logits (B, C, T)
            out = torch.full((x.shape[0], len(ALPHABET) + 1, len(pattern)), -10.0)
            out[0, pattern, range(len(pattern))] = 10.0
            return out
        tok.head.forward = spell.__get__(tok.head)
        assert tok.transcribe(codes[:, :3]) == [expect]
    with pytest.raises(ValueError, match="tokens"):
        tok.transcribe(torch.full((1, 3), K))
    dual = DualSpeechTokenizer(tok, tiny_codec())
    s, a = dual.encode(torch.randn(16000) * 0.1)
    assert s.shape == (1, 31) and a.shape == (1, 3, 63)


@pytest.fixture(scope="module")
def dual_pipe():
    from mmgen.audio.dual import CTCSpeechTokenizer
    from mmgen.pipelines import DualTokenSpeechPipeline

    torch.manual_seed(0)
    ctc = CTCSpeechTokenizer(hidden=32, codebook_dim=8, codebook_size=K).train()
    ctc(torch.randn(4, 80, 40))  # k-means init of its codebook
    torch.manual_seed(0)
    tr = SpeechTransformer(text_vocab_size=K + 1, voices=VOICES, num_quantizers=2, codebook_size=K, dim=32,
                           n_layers=2, n_heads=2, mctp=3, max_frames=120, max_text_len=64, input_kind="semantic")
    return DualTokenSpeechPipeline(transformer=tr.eval(), codec=tiny_codec(), semantic_tokenizer=ctc.eval())


def test_dual_token_pipeline_feeds_semantic_tokens(dual_pipe):
    """The prefix is the source's semantic tokens + 1 (left-padded); outputs, MCTP and streaming as the TTS."""
    from mmgen.pipelines.speech import semantic_to_ids

    wave = np.sin(np.linspace(0, 800, 12000)).astype(np.float32) * 0.3
    sem = dual_pipe.semantic_tokenizer.encode(torch.from_numpy(wave))[0]  # (T',)
    ids = dual_pipe._prefix_ids([wave, wave[:4000]])
    assert torch.equal(ids[0], sem + 1) and ids.shape == (2, len(sem))
    short = dual_pipe.semantic_tokenizer.encode(torch.from_numpy(wave[:4000]))[0]
    assert torch.equal(ids[1, -len(short):], short + 1) and (ids[1, :-len(short)] == 0).all()
    assert torch.equal(semantic_to_ids([sem], 64), (sem + 1)[None])
    kw = dict(voice=VOICES[1], min_seconds=1.0, max_seconds=1.2)
    whole = dual_pipe(wave, mctp=3, **kw)
    assert whole.stats.forward_passes == -(-whole.stats.tokens // 3)
    chunks = list(dual_pipe.stream(wave, mctp=3, **kw))
    np.testing.assert_allclose(np.concatenate(chunks), whole.audios[0, 0, :whole.lengths[0]], atol=1e-5)
    # k = 1 is plain AR over the same prefix: one backbone forward per step
    ar = dual_pipe(wave, mctp=1, **kw)
    assert ar.stats.forward_passes == ar.stats.tokens


@pytest.mark.parametrize("entry", ["__call__", "stream"])
@pytest.mark.parametrize("args,kwargs,match", [
    (("the red dog",), {}, "waveform"),
    ((np.zeros(8000, np.float32),), {"sample_rate": 22050}, "sample_rate must be 16000"),
    ((np.zeros(16000 * 3, np.float32),), {}, r"audio must be at most 2\.05 s \(64 semantic tokens\), got 3\.00 s"),
    ((np.zeros((2, 8000), np.float32),), {}, r"1-D waveform .* got shape \(2, 8000\)"),
    ((np.zeros(0, np.float32),), {}, "at least 1024 samples"),
    ((np.zeros(500, np.float32),), {}, "at least 1024 samples"),
    ((np.full(8000, np.nan, np.float32),), {}, "NaN or inf"),
    ((np.zeros(8000, np.float32),), {"voice": "robot"}, "voice must be one of"),
    ((np.zeros(8000, np.int16),), {}, "float waveform .* got dtype torch.int16"),  # PCM was read 32768x too loud
    ((None,), {}, "non-empty waveform"),
])
def test_dual_token_pipeline_bad_input(dual_pipe, entry, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(dual_pipe, entry)(*args, **kwargs)


@pytest.mark.parametrize("call,match", [
    (lambda p: p([]), "non-empty"),
    (lambda p: p.stream([np.zeros(8000, np.float32)]), "single waveform"),
])
def test_dual_token_pipeline_bad_batch(dual_pipe, call, match):
    with pytest.raises(ValueError, match=match):
        call(dual_pipe)


def test_dual_token_batch_rows_equal_single_runs(dual_pipe):
    """A batch of two waveforms of different lengths: each row equals its batch-1 result (greedy)."""
    waves = [np.sin(np.linspace(0, 800, 12000)).astype(np.float32) * 0.3,
             np.sin(np.linspace(0, 300, 7000)).astype(np.float32) * 0.3]
    kw = dict(voice=VOICES[0], max_seconds=0.6, mctp=2)
    both = dual_pipe(waves, **kw)
    for i, w in enumerate(waves):
        one = dual_pipe(w, **kw)
        assert torch.equal(both.codes[i], one.codes[0])


def test_semantic_encode_never_changes_the_tokenizer():
    """encode() is inference even on a module left in train mode: the VQ codebook stays as it was."""
    from mmgen.audio.dual import CTCSpeechTokenizer

    torch.manual_seed(0)
    ctc = CTCSpeechTokenizer(hidden=32, codebook_dim=8, codebook_size=K).train()
    ctc(torch.randn(4, 80, 40))  # initialise the codebook
    before = {k: v.clone() for k, v in ctc.state_dict().items()}
    wave = torch.from_numpy(np.sin(np.linspace(0, 800, 12000)).astype(np.float32) * 0.3)
    a, b = ctc.encode(wave), ctc.encode(wave)
    assert torch.equal(a, b) and ctc.training
    assert all(torch.equal(before[k], v) for k, v in ctc.state_dict().items())


def test_dual_token_pipeline_checks_its_components(dual_pipe):
    from mmgen.audio.dual import CTCSpeechTokenizer
    from mmgen.pipelines import DualTokenSpeechPipeline

    other = CTCSpeechTokenizer(hidden=32, codebook_dim=8, codebook_size=2 * K)
    with pytest.raises(ValueError, match="text_vocab_size must be"):
        DualTokenSpeechPipeline(transformer=dual_pipe.transformer, codec=dual_pipe.codec, semantic_tokenizer=other)
    text_model = SpeechTransformer(text_vocab_size=K + 1, voices=VOICES, num_quantizers=2, codebook_size=K, dim=32,
                                   n_layers=1, n_heads=2, mctp=2, max_frames=120, max_text_len=64)
    with pytest.raises(ValueError, match="input_kind 'semantic'"):
        DualTokenSpeechPipeline(transformer=text_model, codec=dual_pipe.codec,
                                semantic_tokenizer=dual_pipe.semantic_tokenizer)


def test_text_pipeline_refuses_a_semantic_model(dual_pipe):
    with pytest.raises(ValueError, match="DualTokenSpeechPipeline"):
        SpeechPipeline(transformer=dual_pipe.transformer, codec=dual_pipe.codec)("a cat")


def test_undelay_of_a_grid_shorter_than_the_delay_is_empty():
    """Streaming undelays partial grids; with M levels the first M - 1 steps hold no complete frame."""
    from mmgen.models.speech_transformer import SpeechTransformer

    m = SpeechTransformer(num_quantizers=4, dim=16, n_layers=1, n_heads=2, codebook_size=8, mctp=2)
    codes = torch.randint(0, 8, (4, 5), generator=torch.Generator().manual_seed(0))
    grid = m.delay(codes)  # (5 + 4, 4)
    for s in range(1, grid.shape[0] + 1):
        part = m.undelay(grid[:s])
        assert part.shape == (4, max(0, min(5, s - 3)))
        assert torch.equal(part, codes[:, :part.shape[1]])


def test_kmeans_with_too_few_distinct_vectors_is_a_clear_error():
    from mmgen.audio.semantic import kmeans

    x = torch.cat([torch.zeros(50, 4), torch.ones(50, 4)])
    with pytest.raises(ValueError, match="distinct vectors"):
        kmeans(x, 4, generator=torch.Generator().manual_seed(0))
    assert kmeans(x, 2, generator=torch.Generator().manual_seed(0)).shape == (2, 4)


def test_codec_encode_is_eval_mode_even_on_a_training_module():
    """In train mode the RVQ drops levels (codes -1) and moves its EMA codebooks; encode must do neither and
    must hand the module back in the mode it found it."""
    torch.manual_seed(0)
    codec = MelRVQCodec(codebook_size=16, num_quantizers=3, hidden=32, codebook_dim=8, griffin_lim_iters=4).train()
    wav = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1)) * 0.1
    codec(log_mel(wav, codec.mel_cfg))  # a training forward
    codec.encode(wav)  # k-means-initialises any level the training forward dropped
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    a, b = codec.encode(wav), codec.encode(wav)
    assert codec.training
    assert torch.equal(a, b) and int(a.min()) >= 0
    assert all(torch.equal(v, codec.state_dict()[k]) for k, v in before.items())
