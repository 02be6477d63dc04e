import importlib.util
import os
import shutil

import pytest
import torch

torch.set_num_threads(int(os.environ.get("MMGEN_TEST_THREADS", 1)))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmgen.data.scenes import caption_vocabulary  # noqa: E402
from mmgen.models import ARTransformer, Condition  # noqa: E402
from mmgen.models.text import build_text_encoder, build_text_tokenizer  # noqa: E402
from mmgen.tokenizers_visual import VQTokenizer  # noqa: E402

# Optional tools. Speech tests need eSpeak NG (apt-get install espeak-ng) and the audio extras; on a machine without them they skip
# with this reason (shown by -ra). Under CI (CI=true; .ci/run installs them) they never skip: a missing tool fails.
# The browser test (tests/test_e2e_browser.py) follows the same rule for chromium.
HAVE_ESPEAK = shutil.which("espeak-ng") is not None
HAVE_SF = importlib.util.find_spec("soundfile") is not None
HAVE_PS = importlib.util.find_spec("pocketsphinx") is not None and importlib.util.find_spec("jiwer") is not None
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
needs_espeak = pytest.mark.skipif(not (HAVE_ESPEAK and HAVE_SF) and not IN_CI,
                                  reason="needs the espeak-ng binary (apt-get install espeak-ng) and soundfile "
                                         "(pip install -e '.[audio]'); .ci/run installs both")
needs_pocketsphinx = pytest.mark.skipif(not HAVE_PS and not IN_CI,
                                        reason="needs pocketsphinx and jiwer (pip install -e '.[audio]')")
needs_judge = pytest.mark.skipif(not (HAVE_ESPEAK and HAVE_SF and HAVE_PS) and not IN_CI,
                                 reason="needs espeak-ng plus pocketsphinx and jiwer (pip install -e '.[audio]')")


def load_benchmark(name: str):
    """benchmarks/<name>.py (a script folder, not a package) imported as a module, for tests of its functions."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize(model, std=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


@pytest.fixture
def c2i():
    return randomize(ARTransformer(vocab_size=32, grid_size=4, dim=64, n_layers=2, n_heads=4, num_classes=10))


@pytest.fixture
def t2i():
    return randomize(ARTransformer(vocab_size=32, grid_size=4, dim=64, n_layers=2, n_heads=4, caption_dim=16,
                                   prefix_len=6))


@pytest.fixture
def text_cond():
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    return Condition(text_features=torch.randn(2, 6, 16, generator=g) * mask[..., None], text_mask=mask)


@pytest.fixture
def tiny_pipeline():
    from mmgen.pipelines import ARImagePipeline

    tok = build_text_tokenizer(caption_vocabulary(), 24)
    enc = randomize(build_text_encoder(len(tok), hidden=32, layers=1, heads=2, max_length=24), std=0.05)
    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=64)
    gen = randomize(ARTransformer(vocab_size=64, grid_size=4, dim=32, n_layers=1, n_heads=2, caption_dim=32,
                                  prefix_len=24), std=0.2)
    pipe = ARImagePipeline(transformer=gen, vq=vq.eval(), text_encoder=enc, tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe
