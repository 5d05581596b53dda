"""replearn.train.regularize: penalties, dropout, DropPath, label smoothing, multi-task, transfer learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from replearn.train import TrainConfig, Trainer, make_optimizer
from replearn.train.regularize import (
    DropPath,
    LabelSmoothingCrossEntropy,
    MultiTaskLoss,
    MultiTaskModel,
    Penalty,
    discriminative_lr_groups,
    drop_path,
    freeze,
    l1_penalty,
    l2_penalty,
    label_smoothing_cross_entropy,
    replace_head,
    set_dropout,
    stochastic_depth_rates,
    unfreeze,
)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))


def test_penalties_cover_weights_not_vectors() -> None:
    net = _net()
    weights = [net[0].weight, net[4].weight]
    assert l1_penalty(net).item() == pytest.approx(sum(w.abs().sum().item() for w in weights))
    assert l2_penalty(net).item() == pytest.approx(0.5 * sum(w.square().sum().item() for w in weights))
    everything = sum(p.abs().sum().item() for p in net.parameters())
    assert l1_penalty(net, include_vectors=True).item() == pytest.approx(everything)


def test_coupled_l2_gradient_is_weight_decay() -> None:
    """d/dw of l2·½‖w‖² is l2·w: one SGD step with the penalty equals SGD's own (coupled) weight decay."""
    a, b = _net().eval(), _net().eval()  # eval: no dropout, the two forwards agree
    for p in [*a.parameters(), *b.parameters()]:
        p.requires_grad_(p.dim() > 1)  # the penalty skips vectors; compare on the matrices
    x = torch.randn(5, 4)
    Penalty(l2=0.1)(a).add(a(x).sum()).backward()
    b(x).sum().backward()
    torch.optim.SGD([p for p in a.parameters() if p.requires_grad], lr=0.5).step()
    torch.optim.SGD([p for p in b.parameters() if p.requires_grad], lr=0.5, weight_decay=0.1).step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_l1_drives_weights_to_zero() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 10)
    y = x[:, :2].sum(1, keepdim=True) + 0.5 * torch.randn(32, 1)  # only 2 of 10 inputs matter; few noisy samples
    sparse, dense = nn.Linear(10, 1), nn.Linear(10, 1)
    dense.load_state_dict(sparse.state_dict())
    for model, penalty in ((sparse, Penalty(l1=0.3)), (dense, None)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(500):
            loss = F.mse_loss(model(x), y) + (penalty(model) if penalty else 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert sparse.weight[0, 2:].abs().max() < 0.05 < dense.weight[0, 2:].abs().max()
    assert sparse.weight[0, :2].min() > 0.5


def test_set_dropout() -> None:
    net = _net()
    assert set_dropout(net, 0.3) == 1 and net[3].p == 0.3
    with pytest.raises(ValueError, match="'p' expected a value in \\[0, 1\\)"):
        set_dropout(net, 1.0)


def test_drop_path_drops_whole_samples_and_keeps_the_mean() -> None:
    x = torch.ones(20000, 3, 2)
    out = drop_path(x, 0.25, training=True, generator=torch.Generator().manual_seed(0))
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()  # all or nothing per sample
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.015)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)
    layer = DropPath(0.5).eval()
    assert torch.equal(layer(x), x)  # identity at test time
    assert stochastic_depth_rates(5, 0.2) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_label_smoothing_matches_torch_and_takes_soft_targets() -> None:
    logits = torch.randn(6, 5, dtype=torch.float64)
    target = torch.tensor([0, 4, 2, 2, 1, 3])
    ours = label_smoothing_cross_entropy(logits, target, 0.1)
    torch.testing.assert_close(ours, F.cross_entropy(logits, target, label_smoothing=0.1))
    soft = F.one_hot(target, 5).double() * 0.7 + 0.3 / 5
    torch.testing.assert_close(LabelSmoothingCrossEntropy(0.0)(logits, soft), F.cross_entropy(logits, soft))
    assert label_smoothing_cross_entropy(logits, target, 0.0).item() == pytest.approx(F.cross_entropy(logits, target).item())


def test_multitask_trains_both_heads() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 6)
    parity = (x[:, 0] > 0).long()
    size = (x[:, 1] > 0).long() + (x[:, 1] > 1).long()
    model = MultiTaskModel(nn.Sequential(nn.Linear(6, 32), nn.ReLU()), {"parity": nn.Linear(32, 2), "size": nn.Linear(32, 3)})
    loss = MultiTaskLoss({"parity": F.cross_entropy, "size": F.cross_entropy}, {"parity": 1.0, "size": 0.5})
    accuracy = lambda o, t: (o.argmax(1) == t).float().mean()  # noqa: E731
    metrics = {"parity_accuracy": loss.task_metric("parity", accuracy), "size_accuracy": loss.task_metric("size", accuracy)}
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-2), TrainConfig(epochs=15, batch_size=64, progress=False, plots=False),
                      loss_fn=loss, forward=loss.forward_fn(), metrics=metrics)  # fmt: skip
    trainer.fit((x, parity, size))
    result = trainer.evaluate((x, parity, size))
    assert result["parity_accuracy"] > 0.95 and result["size_accuracy"] > 0.9
    outputs = model(x[:4])
    expected = F.cross_entropy(outputs["parity"], parity[:4]) + 0.5 * F.cross_entropy(outputs["size"], size[:4])
    torch.testing.assert_close(loss(outputs, {"parity": parity[:4], "size": size[:4]}), expected)
    with pytest.raises(ValueError, match="weights name tasks"):
        MultiTaskLoss({"a": F.cross_entropy}, {"b": 1.0})


def test_freeze_unfreeze_replace_head_and_discriminative_lrs() -> None:
    net = _net()
    frozen = freeze(net, ["0.*", "1.*"])
    assert frozen == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["4.weight", "4.bias"]
    with pytest.raises(ValueError, match="no parameter matches \\['encoder.\\*'\\]; the parameters are: 0.weight"):
        freeze(net, "encoder.*")
    head = replace_head(net, 7)
    assert net[4] is head and head.out_features == 7 and head.in_features == 8
    assert net(torch.randn(2, 4)).shape == (2, 7)
    unfreeze(net, "1.*")
    groups = discriminative_lr_groups(net, lr=1e-3, factor=10)
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])  # groups 1 (norm) and 4 (head); 0 frozen
    assert sum(len(g["params"]) for g in groups) == 4
    optimizer = make_optimizer("sgd", groups, lr=1.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'; choose one of adamw, adam, sgd, rmsprop, adagrad, adabound, amsbound"):
        make_optimizer("lamb", net.parameters(), lr=1.0)
