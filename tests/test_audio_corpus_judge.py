"""Speech corpus (eSpeak NG grammar) and offline judges (PocketSphinx WER, simple MCD)."""

import json

import numpy as np
import pytest

from conftest import needs_espeak, needs_judge, needs_pocketsphinx
from mmgen.audio import corpus
from mmgen.audio.corpus import (ALPHABET, POOL_SIZE, TEST_SENTENCES, build_corpus, check_text, load_corpus,
                                sentence_pool, synthesize, training_pool, vocabulary)


# ---------------------------------------------------------------- grammar and text checks

def test_sentence_pool_deterministic_distinct_and_disjoint_from_test():
    a, b = sentence_pool(600, seed=0), sentence_pool(600, seed=0)
    assert a == b and len(set(a)) == 600
    assert sentence_pool(600, seed=1) != a and set(sentence_pool(600, seed=1)) <= set(training_pool())
    assert len(set(training_pool())) == POOL_SIZE >= 2000 and corpus.GRAMMAR_SIZE >= 2000
    assert len(TEST_SENTENCES) == len(set(TEST_SENTENCES)) >= 20
    assert not set(TEST_SENTENCES) & set(training_pool())
    train_words = {w for s in a for w in s.split()}
    assert {w for s in TEST_SENTENCES for w in s.split()} <= train_words
    assert set(vocabulary()) == train_words | {w for s in TEST_SENTENCES for w in s.split()}
    assert all(check_text(s) == s for s in TEST_SENTENCES + tuple(a))
    with pytest.raises(ValueError, match="n must be"):
        sentence_pool(POOL_SIZE + 1)


@needs_pocketsphinx
def test_vocabulary_in_pocketsphinx_dictionary():
    from mmgen.audio.judge import load_cmudict_words

    words = load_cmudict_words()
    assert len(words) > 100_000
    assert [w for w in vocabulary() if w not in words] == []


def test_check_text_normalises_and_names_the_argument():
    assert check_text("  The RED  dog\tbarks ") == "the red dog barks"
    assert check_text("the dog's ball") == "the dog's ball"
    assert set(ALPHABET) == set("abcdefghijklmnopqrstuvwxyz '")
    with pytest.raises(ValueError, match=r"text must be non-empty"):
        check_text("   ")
    with pytest.raises(ValueError, match=r"text contains characters outside.*\['é'\]"):
        check_text("héllo")
    with pytest.raises(ValueError, match=r"text contains characters outside.*\['!'\]"):
        check_text("abc!")
    with pytest.raises(ValueError, match=r"text must have 1\.\.200 characters, got 201"):
        check_text("a" * 201)
    with pytest.raises(ValueError, match=r"text must have 1\.\.10 characters"):
        check_text("abcdefghijk", max_chars=10)


def test_missing_espeak_gives_install_hint(monkeypatch):
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        synthesize("the dog")


# ---------------------------------------------------------------- synthesis and corpus files

@needs_espeak
def test_synthesize_deterministic_16khz():
    a = synthesize("the red dog follows a cat", "en-us+f2", 165)
    b = synthesize("the red dog follows a cat", "en-us+f2", 165)
    # same length and samples up to eSpeak NG's breath noise: the +f2 variant draws it from the C library's rand()
    # (espeak-ng issue #1528, fixed after 1.51); a fresh-clone CI run (session 18) differed by ~1e-4, so not bit for bit
    assert a.dtype == np.float32 and a.ndim == 1 and a.shape == b.shape and np.abs(a - b).max() < 0.02
    assert 0.8 < len(a) / 16000 < 3.0  # ~1.5 s of speech at 16 kHz, silence trimmed
    assert abs(np.abs(a).max() - 0.9) < 1e-6
    slow = synthesize("the red dog follows a cat", "en-us+f3", 150)
    assert len(slow) > len(a) and not np.array_equal(slow[: len(a)], a)


@needs_espeak
def test_build_corpus_deterministic_atomic_and_loadable(tmp_path, monkeypatch):
    a, b = build_corpus(tmp_path / "a", n=6, seed=3), build_corpus(tmp_path / "b", n=6, seed=3)
    meta_a, meta_b = (p / "metadata.jsonl" for p in (a, b))
    assert meta_a.read_text() == meta_b.read_text()
    rows = [json.loads(line) for line in meta_a.read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    assert [r["text"] for r in train] == sentence_pool(6, seed=3)
    assert [r["text"] for r in test] == list(TEST_SENTENCES)
    assert {r["voice"] for r in train} == set(corpus.VOICES) and {r["speed"] for r in train} == set(corpus.SPEEDS)
    assert all(r["voice"] == "en-us+f2" and r["speed"] == 165 for r in test)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp dirs left

    # Rerun on a complete corpus: no-op (files untouched); other settings refused.
    stamp = {p: p.stat().st_mtime_ns for p in a.rglob("*")}
    assert build_corpus(a, n=6, seed=3) == a and {p: p.stat().st_mtime_ns for p in a.rglob("*")} == stamp
    with pytest.raises(ValueError, match="corpus built with"):
        build_corpus(a, n=7, seed=3)

    loaded = load_corpus(a, split="test")
    assert len(loaded) == len(TEST_SENTENCES)
    assert all(r["audio"].dtype == np.float32 and len(r["audio"]) == r["num_samples"] for r in loaded)
    assert np.abs(loaded[0]["audio"] - synthesize(TEST_SENTENCES[0])).max() < 0.02  # int16 files; breath noise
    assert len(load_corpus(a)) == len(rows) and len(load_corpus(a, "train")) == 6
    with pytest.raises(ValueError, match="split"):
        load_corpus(a, split="dev")

    # An interrupted build leaves neither the output dir nor a temp dir behind.
    real, calls = corpus.synthesize, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus, "synthesize", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(tmp_path / "c", n=6, seed=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    # A temp dir left by a killed build (dead pid) is cleared by the next build.
    monkeypatch.setattr(corpus, "synthesize", real)
    (tmp_path / ".c.tmp-999999999" / "wav").mkdir(parents=True)
    build_corpus(tmp_path / "c", n=1, seed=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


@needs_espeak
def test_corpus_cli(tmp_path, capsys):
    corpus.main(["--out", str(tmp_path / "speech"), "--n", "2", "--seed", "1"])
    assert "utterances" in capsys.readouterr().out
    assert (tmp_path / "speech" / "corpus.json").is_file()
    assert len(list((tmp_path / "speech" / "wav").glob("*.wav"))) == 2 + len(TEST_SENTENCES)


# ---------------------------------------------------------------- judges

@pytest.fixture(scope="module")
def judge():
    from mmgen.audio.judge import default_judge

    return default_judge()


@pytest.fixture(scope="module")
def clean8():
    return [synthesize(s, "en-us+f2", 165) for s in TEST_SENTENCES[:8]]


@needs_judge
def test_wer_clean_low_and_negative_controls_high(judge, clean8):
    refs = list(TEST_SENTENCES[:8])
    clean = judge.wer(refs, clean8, 16000)
    assert clean["wer"] <= 0.15, clean
    assert len(clean["hyps"]) == 8 and clean["num_words"] == sum(len(r.split()) for r in refs)
    wrong = judge.wer(refs, [synthesize(s) for s in sentence_pool(8, seed=7)], 16000)
    assert wrong["wer"] >= 0.7, wrong
    rng = np.random.default_rng(0)
    noise = [(0.3 * rng.standard_normal(len(a))).astype(np.float32) for a in clean8[:4]]
    assert judge.wer(refs[:4], noise, 16000)["wer"] >= 0.7


@needs_judge
def test_score_pairs_wer_with_mcd(judge, clean8):
    refs = list(TEST_SENTENCES[:4])
    same = judge.score(refs, clean8[:4], clean8[:4], num_hyps=2)
    assert same["mcd"] == 0.0 and same["wer"] == pytest.approx(judge.wer(refs, clean8[:4], 16000)["wer"], abs=1e-4)
    assert len(same["hyps"]) == 2
    other = judge.score(refs, clean8[:4], [synthesize(s, "en-us+f4", 165) for s in refs])
    assert other["mcd"] > 1.0  # another voice of the same text is measurably different
    with pytest.raises(ValueError, match="ref_audios and audios"):
        judge.score(refs, clean8[:3], clean8[:4])


@needs_judge
def test_transcribe_requires_16khz(judge, clean8):
    with pytest.raises(ValueError, match="sample_rate must be 16000"):
        judge.transcribe(clean8[0], 22050)
    int16 = np.round(clean8[0] * 32767).astype(np.int16)
    assert judge.transcribe(int16, 16000) == judge.transcribe(clean8[0], 16000)


@needs_pocketsphinx
def test_word_error_rate_and_oov_check():
    from mmgen.audio.judge import SpeechJudge, word_error_rate

    assert word_error_rate(["a b c", "d e"], ["a b c", ""]) == pytest.approx(2 / 5)  # empty = all deletions
    assert word_error_rate(["a b c"], ["a x c d"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not in the PocketSphinx dictionary.*qqxzv"):
        SpeechJudge(["the dog qqxzv"])


@needs_espeak
def test_mel_cepstral_distortion_ranks(clean8):
    from mmgen.audio.judge import dtw_path, mel_cepstral_distortion

    x, other = clean8[0], clean8[1]
    assert mel_cepstral_distortion(x, x) == pytest.approx(0.0, abs=1e-9)
    noisy = x + (0.003 * np.random.default_rng(0).standard_normal(len(x))).astype(np.float32)
    near, far = mel_cepstral_distortion(x, noisy), mel_cepstral_distortion(x, other)
    assert 0 < near < far and far > 5.0
    i, j = dtw_path(np.zeros((3, 2)), np.zeros((5, 2)))
    assert (i[0], j[0], i[-1], j[-1]) == (0, 0, 2, 4) and np.all(np.diff(i) >= 0) and np.all(np.diff(j) >= 0)
    with pytest.raises(ValueError, match="sample_rate"):
        mel_cepstral_distortion(x, x, sample_rate=22050)
