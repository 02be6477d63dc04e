"""Speech: eSpeak NG corpus, acoustic RVQ codec, semantic k-means tokens, offline judges (PocketSphinx WER, MCD)."""

from .corpus import (ALPHABET, SAMPLE_RATE, SPEEDS, TEST_SENTENCES, TEST_SPEED, TEST_VOICE, VOICES, build_corpus,
                     check_text, load_corpus, sentence, sentence_pool, synthesize, training_pool, vocabulary)
from .codec import MelRVQCodec
from .features import MelConfig, griffin_lim, log_mel, vocode
from .judge import SpeechJudge, default_judge, mel_cepstral_distortion, word_error_rate
from .semantic import KMeansSpeechTokenizer

__all__ = ["MelRVQCodec", "KMeansSpeechTokenizer", "MelConfig", "griffin_lim", "log_mel", "vocode", "ALPHABET", "SAMPLE_RATE", "SPEEDS", "TEST_SENTENCES", "TEST_SPEED", "TEST_VOICE", "VOICES",
           "build_corpus", "check_text", "load_corpus", "sentence", "sentence_pool", "synthesize", "training_pool",
           "vocabulary", "SpeechJudge", "default_judge", "mel_cepstral_distortion", "word_error_rate"]
