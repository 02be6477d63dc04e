"""Speech interfaces on a tiny random SpeechPipeline: ``mmgen tts``, ``mmgen batch-tts``, ``mmgen info`` and the
app's text-to-speech tab (handlers called directly, plus one gradio_client round trip)."""

import json
import re
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf
import torch

from mmgen.audio.codec import MelRVQCodec
from mmgen.audio.corpus import ALPHABET, VOICES
from mmgen.cli import main as cli_main
from mmgen.cli import pcm16
from mmgen.models.speech_transformer import SpeechTransformer
from mmgen.pipelines import SpeechPipeline
from mmgen.pipelines.batch import METADATA

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import app  # noqa: E402

TEXT = "the red dog follows a cat"
TEXTS = ["the red dog follows a cat", "a blue bird", "the happy horse visits a doctor", "a small cat"]
MAX_FRAMES = 80  # 1.28 s: vocoder chunks of head (mctp frames), 8 - head, 24, 32 and 16 frames, streamed before generation ends


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """An assets folder holding a tiny random ``tts`` pipeline (level-0 END suppressed: full-length audio)."""
    torch.manual_seed(0)
    tr = SpeechTransformer(text_vocab_size=len(ALPHABET) + 1, voices=VOICES, num_quantizers=2, codebook_size=16,
                           dim=32, n_layers=2, n_heads=2, mctp=3, max_frames=MAX_FRAMES)
    with torch.no_grad():
        for head in tr.heads:
            head.weight.normal_(0.0, 1.0)  # confident heads: samples and greedy tokens vary with the input
        tr.heads[0].weight[tr.END] = 0.0  # END logit 0 vs codes ~ N(0, 5.7): utterances run to max_frames
    codec = MelRVQCodec(codebook_size=16, num_quantizers=2, hidden=32, codebook_dim=8, griffin_lim_iters=4).train()
    for _ in range(12):  # k-means initialises each RVQ level on a training batch (levels drop out at random)
        codec(torch.randn(4, 80, 40))
    assert all(bool(layer._codebook.initted) for layer in codec.rvq.layers)
    root = tmp_path_factory.mktemp("assets")
    SpeechPipeline(transformer=tr.eval(), codec=codec.eval()).save_pretrained(root / "tts")
    return root


@pytest.fixture(scope="module")
def tts_dir(assets) -> Path:
    return assets / "tts"


@pytest.fixture(scope="module")
def pipe(tts_dir):
    p = SpeechPipeline.from_pretrained(tts_dir)
    p.set_progress_bar_config(disable=True)
    return p


def run_cli(capsys, *args) -> tuple[int, dict | None, str]:
    """``mmgen ARGS`` in-process -> (exit code, last stdout JSON line or None, stderr)."""
    try:
        code = cli_main([str(a) for a in args])
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if out.startswith("{\n"):  # `mmgen info`: one indented document
        return code, json.loads(out), err
    return code, (json.loads(lines[-1]) if lines else None), err


def read_wav(path: Path) -> tuple[np.ndarray, "sf._SoundFileInfo"]:
    return sf.read(path, dtype="int16"), sf.info(path)


# --- mmgen tts -------------------------------------------------------------------------------------------
def test_cli_tts_writes_16khz_pcm_wav_of_the_reported_length(capsys, tmp_path, tts_dir, pipe):
    out = tmp_path / "a.wav"
    code, res, err = run_cli(capsys, "tts", TEXT, "--out", out, "--model", tts_dir, "--max-seconds", 0.3,
                             "--threads", 1)
    assert code == 0, err
    stats = res["stats"]
    (data, _), info = read_wav(out)
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
    assert info.frames == stats["samples"] == int(0.3 * 62.5) * 256  # 18 frames of hop 256
    assert stats["audio_seconds"] == round(info.frames / 16000, 4) and stats["sample_rate"] == 16000
    assert stats["method"] == "mctp3" and stats["steps_per_forward"] == round(stats["steps"] / stats["forward_passes"], 4)
    assert stats["forward_passes"] >= stats["steps"] / 3 and stats["wall_time"] > 0
    assert stats["rtf"] == pytest.approx(stats["wall_time"] / stats["audio_seconds"], rel=1e-2)
    ref = pipe(TEXT, max_seconds=0.3)  # greedy: the file holds exactly the pipeline's audio as 16-bit PCM
    assert np.array_equal(data, pcm16(ref.audios[0, 0, :ref.lengths[0]])) and np.abs(data).max() > 0
    assert ref.stats.forward_passes == stats["forward_passes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]  # no temp file left


def test_cli_stream_writes_the_same_audio_and_reports_first_chunk(capsys, tmp_path, tts_dir):
    args = ["--model", tts_dir, "--temperature", 0.9, "--top-k", 8, "--mctp", 2, "--voice", "en-us+f3"]
    outs = {}
    for name, extra in (("plain", []), ("stream", ["--stream"]), ("seed1", ["--seed", 1])):
        code, res, err = run_cli(capsys, "tts", TEXT, "--out", tmp_path / f"{name}.wav", "--seed", 0, *args, *extra)
        assert code == 0, err
        outs[name] = (sf.read(tmp_path / f"{name}.wav", dtype="float32")[0], res["stats"])
    (plain, s_plain), (streamed, s_stream), (other, _) = outs["plain"], outs["stream"], outs["seed1"]
    assert len(plain) == MAX_FRAMES * 256 and streamed.shape == plain.shape
    assert np.allclose(streamed, plain, atol=1e-5)
    assert not np.allclose(other, plain, atol=1e-3)  # sampling: the seed matters
    assert s_stream["stream"] and s_stream["forward_passes"] == s_plain["forward_passes"]
    assert s_stream["steps"] == s_plain["steps"] and s_stream["steps_per_forward"] == s_plain["steps_per_forward"]
    assert 0 < s_stream["time_to_first_chunk"] < s_stream["wall_time"]  # chunk 0 came before the end
    assert "time_to_first_chunk" not in s_plain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.wav", "seed1.wav", "stream.wav"]


@pytest.mark.parametrize("args,msg", [
    (["", "--max-seconds", "0.3"], "text must be non-empty"),
    (["   "], "text must be non-empty"),
    (["héllo"], "outside the allowed set"),
    (["héllo", "--stream"], "outside the allowed set"),
    ([TEXT, "--voice", "nope"], "voice must be one of"),
    ([TEXT, "--mctp", "0", "--stream"], "mctp must be an integer in \\[1, 3\\]"),
    ([TEXT, "--max-seconds", "60"], "max_seconds"),
    ([TEXT, "--temperature", "-1"], "temperature"),
    ([TEXT, "--temperature", "1", "--top-k", "-1"], "top_k must be None or an integer >= 0"),
    ([TEXT, "--temperature", "nan"], "temperature must be a number in"),
])
def test_cli_bad_input_exits_nonzero_and_writes_nothing(capsys, tmp_path, tts_dir, args, msg):
    out = tmp_path / "sub" / "bad.wav"
    code, res, err = run_cli(capsys, "tts", *args, "--out", out, "--model", tts_dir)
    assert code == 2 and res is None
    assert "mmgen: error:" in err and "Traceback" not in err
    assert re.search(msg, err), err
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_model_and_bad_out_name(capsys, tmp_path):
    code, _, err = run_cli(capsys, "tts", TEXT, "--out", tmp_path / "x.wav", "--model", tmp_path / "nope")
    assert code == 2 and "train_tts" in err
    code, _, err = run_cli(capsys, "tts", TEXT, "--out", tmp_path / "x.mp3")
    assert code == 2 and ".wav" in err
    assert list(tmp_path.iterdir()) == []


def test_info_lists_the_tts_model_and_default_model_name(capsys, tmp_path, assets, monkeypatch):
    monkeypatch.setenv("MMGEN_ASSETS", str(assets))
    code, info, _ = run_cli(capsys, "info")
    assert code == 0
    assert info["tts"]["pipeline"] == "SpeechPipeline"
    assert info["tts"]["voices"] == list(VOICES) and info["tts"]["mctp_max"] == 3
    code, res, err = run_cli(capsys, "tts", "a cat", "--out", tmp_path / "d.wav", "--max-seconds", 0.1)
    assert code == 0 and res["stats"]["samples"] == 6 * 256, err  # default --model tts from $MMGEN_ASSETS


# --- mmgen batch-tts ---------------------------------------------------------------------------------------
def records(folder: Path) -> list[dict]:
    return [json.loads(ln) for ln in (folder / METADATA).read_text().splitlines()]


def test_batch_tts_one_wav_per_line_and_metadata(capsys, tmp_path, tts_dir, pipe):
    src = tmp_path / "texts.jsonl"
    lines = [{"text": TEXTS[0]}, {"text": "A  Blue Bird", "seed": 42}, {"text": TEXTS[2], "voice": "en-us+f4"},
             {"text": TEXTS[3]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in lines) + "\n")
    out = tmp_path / "out"
    code, summary, err = run_cli(capsys, "batch-tts", "--texts", src, "--out", out, "--model", tts_dir,
                                 "--max-seconds", 0.3, "--seed", 10, "--batch-size", 3, "--no-progress")
    assert code == 0, err
    assert summary["complete"] and summary["generated_here"] == 4 and summary["num_processes"] == 1
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.wav" for i in range(4)] + [METADATA]
    recs = records(out)
    assert [r["id"] for r in recs] == [0, 1, 2, 3] and [r["file"] for r in recs] == [f"{i:05d}.wav" for i in range(4)]
    assert [r["text"] for r in recs] == [TEXTS[0], "a blue bird", TEXTS[2], TEXTS[3]]
    assert [r["voice"] for r in recs] == ["en-us+f2", "en-us+f2", "en-us+f4", "en-us+f2"]
    assert [r["seed"] for r in recs] == [10, 42, 12, 13]
    assert all(r["mctp"] == 3 and r["forward_passes"] > 0 and r["checkpoint"] == str(tts_dir.resolve()) for r in recs)
    for r in recs:
        (data, _), info = read_wav(out / r["file"])
        assert info.samplerate == 16000 and info.subtype == "PCM_16"
        assert info.frames == r["samples"] == 18 * 256 and r["seconds"] == round(info.frames / 16000, 4)
    # greedy batches (chunk 0 = items 0, 1 with voice f2, padded to a common length, + item 2 alone with f4) give
    # each text its own audio: every file equals that text run alone
    for r in recs:
        ref = pipe(r["text"], voice=r["voice"], max_seconds=0.3)
        assert np.array_equal(read_wav(out / r["file"])[0][0], pcm16(ref.audios[0, 0, :ref.lengths[0]])), r


def test_batch_tts_resume_equals_a_fresh_run(capsys, tmp_path, tts_dir):
    (tmp_path / "two.txt").write_text("\n".join(TEXTS[:2]) + "\n")
    (tmp_path / "four.txt").write_text("\n".join(TEXTS) + "\n")
    common = ["--model", tts_dir, "--max-seconds", 0.3, "--seed", 5, "--temperature", 0.9, "--batch-size", 3,
              "--no-progress"]
    code, s1, err = run_cli(capsys, "batch-tts", "--texts", tmp_path / "two.txt", "--out", tmp_path / "a", *common)
    assert code == 0 and s1["generated_here"] == 2, err
    first = {n: (tmp_path / "a" / n).stat().st_mtime_ns for n in ("00000.wav", "00001.wav")}
    code, s2, err = run_cli(capsys, "batch-tts", "--texts", tmp_path / "four.txt", "--out", tmp_path / "a", *common)
    assert code == 0 and s2["skipped"] == 2 and s2["generated_here"] == 2 and s2["complete"], err
    assert all((tmp_path / "a" / n).stat().st_mtime_ns == t for n, t in first.items())  # not rewritten
    code, s3, err = run_cli(capsys, "batch-tts", "--texts", tmp_path / "four.txt", "--out", tmp_path / "b", *common)
    assert code == 0 and s3["generated_here"] == 4, err
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) == [f"{i:05d}.wav" for i in range(4)] + [METADATA]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    assert len({(tmp_path / "b" / f"{i:05d}.wav").read_bytes() for i in range(4)}) == 4
    # item i is `mmgen tts` with seed 5 + i
    code, _, err = run_cli(capsys, "tts", TEXTS[3], "--out", tmp_path / "one.wav", "--model", tts_dir,
                           "--max-seconds", 0.3, "--temperature", 0.9, "--seed", 8)
    assert code == 0, err
    assert np.array_equal(read_wav(tmp_path / "one.wav")[0][0], read_wav(tmp_path / "b" / "00003.wav")[0][0])
    # resuming into the folder with other settings is refused; a bad text is refused before any work
    code, _, err = run_cli(capsys, "batch-tts", "--texts", tmp_path / "four.txt", "--out", tmp_path / "a",
                           *common, "--mctp", 1)
    assert code == 2 and "different settings" in err and "Traceback" not in err
    (tmp_path / "bad.txt").write_text("a cat\nhéllo\n")
    code, _, err = run_cli(capsys, "batch-tts", "--texts", tmp_path / "bad.txt", "--out", tmp_path / "c", *common)
    assert code == 2 and "line 2" in err and not (tmp_path / "c").exists()


# --- app: text-to-speech tab -------------------------------------------------------------------------------
def synth(tts_dir, text=TEXT, voice="en-us+f2", mctp=3, temperature=0.0, seed=0, stream=False, compare=False):
    return list(app.tts_handler(str(tts_dir))(text, voice, mctp, temperature, seed, stream, compare))


def test_app_speech_handler_plain_stream_and_compare(tts_dir, pipe):
    (only,) = synth(tts_dir, mctp=2, temperature=0.7, seed=3)
    (sr, audio), md, stats = only
    ref = pipe(TEXT, mctp=2, temperature=0.7, generator=torch.Generator().manual_seed(3))
    assert sr == 16000 and audio.dtype == np.int16
    assert np.array_equal(audio, pcm16(ref.audios[0, 0, :ref.lengths[0]]))
    assert stats["forward_passes"] == ref.stats.forward_passes and stats["mctp"] == 2 and stats["seed"] == 3
    for row in ("forward passes", "steps per forward", "real-time factor"):
        assert row in md

    steps = synth(tts_dir, mctp=2, temperature=0.7, seed=3, stream=True, compare=True)
    assert len(steps) == 6  # five chunks (head 1 = mctp 2 - delay 1, then 7 + 24 + 32 + 16 frames), then the stats
    sizes = [len(a) for (_, a), _, _ in steps[:-1]]
    assert sizes == [1 * 256, 8 * 256, 32 * 256, 64 * 256, 80 * 256]  # the audio so far grows chunk by chunk
    (sr, final), md, stats = steps[-1]
    assert np.array_equal(final, audio) and stats["stream"] and 0 < stats["time_to_first_chunk"] <= stats["wall_time"]
    assert stats["ar_forward_passes"] > stats["forward_passes"]  # AR needs a forward per step
    assert stats["speedup_over_ar_forward_passes"] == round(stats["ar_forward_passes"] / stats["forward_passes"], 3)
    assert "speed-up vs AR" in md and "time to first chunk" in md


@pytest.mark.parametrize("changes,msg", [
    ({"text": ""}, "text must be a non-empty string"),
    ({"text": "héllo"}, "outside the allowed set"),
    ({"text": "héllo", "stream": True}, "outside the allowed set"),
    ({"voice": "nope"}, "voice must be one of"),
    ({"mctp": 4}, "mctp must be an integer in \\[1, 3\\]"),
    ({"mctp": 0, "stream": True}, "mctp must be an integer"),
    ({"seed": -1}, "seed"),
    ({"temperature": -0.5}, "temperature"),
])
def test_app_speech_bad_input_raises_gr_error(tts_dir, changes, msg):
    with pytest.raises(gr.Error, match=msg):
        synth(tts_dir, **changes)


def test_app_speech_missing_model_is_a_clear_error_and_loading_is_lazy(tmp_path, tts_dir):
    with pytest.raises(gr.Error, match="not installed.*train_tts"):
        synth(tmp_path / "no-tts")
    key = str(tts_dir.resolve())
    app._CACHE.pop(key, None)
    demo = app.build_demo(app.SCENES_MODEL, app.DIGITS_MODEL, tts_model=str(tts_dir))  # old positional args still work
    assert key not in app._CACHE  # the model loads on the first request, not with the tab
    comps = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    choices = [c[0] if isinstance(c, (tuple, list)) else c for c in comps["tts-voice"].choices]
    assert choices == list(VOICES) and comps["tts-mctp"].maximum == 3
    demo.close()
    # without a model folder the tab still builds (defaults), and says what is missing when used
    app.build_demo(tts_model=str(tmp_path / "no-tts")).close()


def test_app_speech_endpoint_over_http(tts_dir):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    demo = app.build_demo(tts_model=str(tts_dir))
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, ssr_mode=False)
    client = Client(url, verbose=False)
    try:
        path, md, stats = client.predict(TEXT, "en-us+f3", 3, 0.0, 0, True, False, api_name="/synthesize_speech")
        data, sr = sf.read(path, dtype="int16")
        assert sr == 16000 and len(data) == stats["samples"] == MAX_FRAMES * 256 and "forward passes" in md
        with pytest.raises(AppError, match="outside the allowed set") as err:
            client.predict("héllo", "en-us+f3", 3, 0.0, 0, False, False, api_name="/synthesize_speech")
        assert "Traceback" not in str(err.value)
    finally:
        client.close()
        demo.close()


def test_speech_stats_count_accepted_lengths_per_row_like_the_image_decoders(pipe):
    out = pipe([TEXT, TEXT], mctp=3, max_seconds=0.3)
    assert len(out.stats.accepted_lengths) == 2 * out.stats.forward_passes  # one entry per row per backbone pass
    assert sum(out.stats.accepted_lengths) == 2 * out.stats.tokens


def test_speech_stats_stop_counting_a_row_at_its_own_end():
    """A row of F frames takes F + M delayed steps; the forced END steps it takes while a longer batch mate goes on
    are not accepted tokens (as SJD / LANTERN leave finished rows out), so each row's entries sum to its own steps."""
    from mmgen.models.speech_transformer import SpeechGeneration
    from mmgen.pipelines.speech import row_steps_per_forward

    m = 2
    gen = SpeechGeneration(codes=[torch.zeros(m, 3, dtype=torch.long), torch.zeros(m, 7, dtype=torch.long)],
                           steps=torch.zeros(2, 9, m, dtype=torch.long), forward_passes=4, steps_per_forward=[3, 3, 3])
    assert row_steps_per_forward(gen, m) == [3, 2, 3, 3, 3]  # rows end after 5 and 9 steps
    capped = SpeechGeneration(codes=[torch.zeros(m, 9, dtype=torch.long)], steps=torch.zeros(1, 9, m, dtype=torch.long),
                              forward_passes=4, steps_per_forward=[3, 3, 3])  # max_steps reached before END
    assert row_steps_per_forward(capped, m) == [3, 3, 3]
