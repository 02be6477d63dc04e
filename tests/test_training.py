import torch
import torch.nn.functional as F

from mmgen.models import ARTransformer, Condition
from mmgen.train.common import load_trainer_state, optimizer_from_safetensors, save_checkpoint


def test_a_few_generator_steps_lower_the_loss():
    torch.manual_seed(0)
    model = ARTransformer(vocab_size=16, grid_size=4, dim=32, n_layers=2, n_heads=2, num_classes=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    labels = torch.arange(4).repeat(4)
    tokens = (labels[:, None] * 3 + torch.arange(16)[None]) % 16  # class-dependent deterministic images
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(tokens, Condition(class_labels=labels)).flatten(0, 1), tokens.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip_restores_model_and_optimizer(tmp_path):
    model = ARTransformer(vocab_size=16, grid_size=2, dim=32, n_layers=1, n_heads=2, num_classes=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(torch.zeros(2, 4, dtype=torch.long), Condition(class_labels=torch.tensor([0, 1]))).sum()
    loss.backward()
    opt.step()
    save_checkpoint(tmp_path / "ck", {"transformer": model}, opt, step=7)
    assert load_trainer_state(tmp_path / "ck")["step"] == 7
    model2 = ARTransformer.from_pretrained(tmp_path / "ck" / "transformer")
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    optimizer_from_safetensors(opt2, tmp_path / "ck" / "optimizer.safetensors")
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        assert torch.equal(s1["state"][k]["exp_avg"], s2["state"][k]["exp_avg"])
    # a failing write leaves the previous checkpoint intact and no temp folder behind
    class Boom:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    try:
        save_checkpoint(tmp_path / "ck", {"bad": Boom()}, None, step=8)
    except RuntimeError:
        pass
    assert load_trainer_state(tmp_path / "ck")["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
