import numpy as np
import pytest
import torch

from mmgen.pipelines import ARImagePipeline

PROMPT = "a small red circle on the left, white background"


def test_save_load_round_trip_gives_identical_images(tiny_pipeline, tmp_path):
    a = tiny_pipeline(PROMPT, generator=torch.Generator().manual_seed(0), output_type="np")
    tiny_pipeline.save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").exists()
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    loaded = ARImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    b = loaded(PROMPT, generator=torch.Generator().manual_seed(0), output_type="np")
    assert torch.equal(a.tokens, b.tokens)
    assert np.array_equal(a.images, b.images)


def test_seeded_determinism_and_seed_sensitivity(tiny_pipeline):
    run = lambda s: tiny_pipeline(PROMPT, generator=torch.Generator().manual_seed(s), output_type="pt").tokens
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_output_types(tiny_pipeline):
    g = lambda: torch.Generator().manual_seed(0)
    pil = tiny_pipeline(PROMPT, generator=g(), num_images_per_prompt=2).images
    assert len(pil) == 2 and pil[0].size == (16, 16)
    arr = tiny_pipeline(PROMPT, generator=g(), output_type="np").images
    assert arr.shape == (1, 16, 16, 3) and 0 <= arr.min() and arr.max() <= 1
    pt = tiny_pipeline(PROMPT, generator=g(), output_type="pt").images
    assert pt.shape == (1, 3, 16, 16)
    lat = tiny_pipeline(PROMPT, generator=g(), output_type="latent").images
    assert lat.shape == (1, 16) and lat.dtype == torch.long
    images, stats = tiny_pipeline(PROMPT, generator=g(), return_dict=False)
    assert stats.forward_passes == 16


def test_callback_called_each_step_and_can_edit_tokens(tiny_pipeline):
    seen = []

    def cb(pipe, step, timestep, kwargs):
        seen.append((step, timestep, kwargs["tokens"].shape[1]))
        tokens = kwargs["tokens"].clone()
        tokens[:, -1] = 7  # force every token to 7
        return {"tokens": tokens}

    out = tiny_pipeline(PROMPT, generator=torch.Generator().manual_seed(0), callback_on_step_end=cb,
                        output_type="latent")
    assert [s for s, _, _ in seen] == list(range(16))
    assert [t for _, t, _ in seen] == list(range(1, 17))
    assert bool((out.tokens == 7).all())

    # the edits are what the model is fed: greedy, each step's new token (seen before the edit) is the model's
    # argmax after all-7 predecessors, CFG-mixed as the pipeline mixes it
    fresh = []

    def record(pipe, step, timestep, kwargs):
        fresh.append(int(kwargs["tokens"][0, -1]))
        return {"tokens": torch.full_like(kwargs["tokens"], 7)}

    tiny_pipeline(PROMPT, do_sample=False, guidance_scale=2.0, callback_on_step_end=record, output_type="latent")
    gen = tiny_pipeline.transformer
    cond = tiny_pipeline.encode_condition(PROMPT)
    sevens = torch.full((1, 16), 7)
    with torch.no_grad():
        lc, lu = gen(sevens, cond), gen(sevens, gen.null_condition(cond))
    assert fresh == (lu + 2.0 * (lc - lu)).argmax(-1)[0].tolist()


@pytest.mark.parametrize("kwargs,arg", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": " ".join(["red"] * 30)}, "too long"),
    ({"prompt": [PROMPT, " ".join(["red"] * 30)]}, "prompt is too long: 30 tokens"),  # a long one among short ones
    ({"prompt": PROMPT, "guidance_scale": float("inf")}, r"guidance_scale must be a number in \[0, 1000\]"),
    ({"prompt": PROMPT, "guidance_scale": 1e308}, "guidance_scale"),  # overflowed the CFG mix in torch before
    ({"prompt": PROMPT, "temperature": 1e-300}, r"temperature must be a number in \[0.0001, 10000\]"),
    ({"prompt": 5}, "prompt must be a string"),
    ({"prompt": PROMPT, "cfg_interval": (0.5,)}, "cfg_interval must be a pair"),
    ({"prompt": PROMPT, "cfg_interval": 0.5}, "cfg_interval must be a pair"),
    ({"prompt": PROMPT, "num_images_per_prompt": True}, "num_images_per_prompt"),
    ({"prompt": PROMPT, "callback_on_step_end": lambda p, s, t, kw: kw["tokens"]}, "must return a dict"),
    ({"prompt": PROMPT, "callback_on_step_end": lambda p, s, t, kw: {"tokens": kw["tokens"][:, :0]}},
     "callback_on_step_end's 'tokens' must be integer ids of shape"),
    ({"prompt": PROMPT, "callback_on_step_end": lambda p, s, t, kw: {"tokens": kw["tokens"] + 10 ** 6}},
     "callback_on_step_end's 'tokens'"),
    ({"prompt": PROMPT, "guidance_scale": None}, "guidance_scale"),
    ({"prompt": PROMPT, "guidance_scale": -1.0}, "guidance_scale"),
    ({"prompt": PROMPT, "top_p": 0.0}, "top_p"),
    ({"prompt": PROMPT, "top_p": 1.01}, "top_p"),
    ({"prompt": PROMPT, "output_type": "jpeg"}, "output_type"),
    ({"prompt": PROMPT, "num_images_per_prompt": 0}, "num_images_per_prompt"),
    ({"class_labels": [1]}, "prompt"),
    ({"prompt": PROMPT, "decoding": "nope"}, "decoding"),
])
def test_bad_pipeline_inputs_raise_value_error(tiny_pipeline, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        tiny_pipeline(**kwargs)


def test_missing_checkpoint_folder(tmp_path):
    from mmgen.assets import model_path

    with pytest.raises(ValueError, match="model"):
        model_path(str(tmp_path / "nope"))


def test_pickled_weights_are_refused_not_unpickled(tiny_pipeline, tmp_path):
    """A pipeline (or one model) saved as pickle-based ``.bin`` files does not load: weights come from safetensors
    only, every component included; asking for ``use_safetensors=False`` is a ValueError."""
    from mmgen.models import ARTransformer

    tiny_pipeline.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert (tmp_path / "pickled" / "transformer" / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(OSError, match="safetensors"):
        ARImagePipeline.from_pretrained(tmp_path / "pickled")
    with pytest.raises(OSError, match="safetensors"):
        ARTransformer.from_pretrained(tmp_path / "pickled" / "transformer")
    with pytest.raises(ValueError, match="safetensors only"):
        ARTransformer.from_pretrained(tmp_path / "pickled" / "transformer", use_safetensors=False)
    tiny_pipeline.save_pretrained(tmp_path / "safe")
    ARImagePipeline.from_pretrained(tmp_path / "safe")  # the default format loads


def test_class_labels_take_ints_only():
    """Ints, lists, numpy and 0/1-d integer tensors are class labels; bools, strings, None and floats are refused by
    name (``True`` used to become class 1, a 0-d tensor a TypeError)."""
    from mmgen.assets import model_path

    pipe = ARImagePipeline.from_pretrained(model_path("digits-c2i"))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(output_type="latent", generator=torch.Generator().manual_seed(0), do_sample=False)
    ref = pipe(class_labels=[3, 4], **kw).tokens
    for labels in (np.array([3, 4]), torch.tensor([3, 4]), [np.int64(3), 4]):
        assert torch.equal(pipe(class_labels=labels, **kw).tokens, ref)
    assert torch.equal(pipe(class_labels=torch.tensor(3), **kw).tokens, ref[:1])
    for bad in (True, ["3"], [None], [3.0], torch.tensor([3.0]), []):
        with pytest.raises(ValueError, match="class_labels must be an int"):
            pipe(class_labels=bad, **kw)
