"""The real bilevel problems: hyper-cleaning and ℓ2 hyperparameter selection, their data,
metrics and hypergradients (against finite differences), and the command that runs them."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import bilevel_problems
import numpy as np
import pytest
import torch
from PIL import Image

import stackelberg as sg
from stackelberg.data import TensorBatches, load_mnist
from stackelberg.game import functional_view
from stackelberg.games.hyper_cleaning import (
    HyperCleaning,
    cleaning_scores,
    corrupt_labels,
    split_for_cleaning,
)
from stackelberg.games.hyperparameters import L2Regularization, split_for_hyperparameters
from stackelberg.games.reweighting import (
    ClassReweighting,
    inverse_frequency_weights,
    long_tailed_counts,
    split_imbalanced,
)
from stackelberg.models import LogisticRegression


def blobs(n: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(k, d, generator=generator, dtype=torch.float64)
    y = torch.randint(k, (n,), generator=generator)
    return centres[y] + torch.randn(n, d, generator=generator, dtype=torch.float64), y


def solve_follower(game: sg.Game, batch) -> None:
    """The follower at its optimum: Newton's method on the flattened parameters, to machine
    precision (pseudo-inverse: softmax leaves an unpenalized bias shift free)."""
    params = list(game.follower.parameters())
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = [t.view(s) for t, s in zip(torch.split(flat, sizes), shapes, strict=True)]
        return game.follower_loss(game.leader, functional_view(game.follower, parts), batch)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    for _ in range(25):
        gradient = torch.autograd.functional.jacobian(loss, flat)
        hessian = torch.autograd.functional.hessian(loss, flat)
        flat = flat - torch.linalg.pinv(hessian, hermitian=True) @ gradient
    with torch.no_grad():
        for p, t in zip(params, torch.split(flat, sizes), strict=True):
            p.copy_(t.view(p.shape))


def value_at_optimum(game: sg.Game, train, val) -> float:
    solve_follower(game, train)
    with torch.no_grad():
        return float(game.leader_loss(game.leader, game.follower, val))


def implicit_hypergradient(game: sg.Game, train, val) -> torch.Tensor:
    solve_follower(game, train)
    solver = sg.TotalGradient(
        game,
        torch.optim.SGD(game.leader.parameters(), lr=0.0),
        torch.optim.SGD(game.follower.parameters(), lr=0.0),
        linear_solver=sg.solvers.CG(max_iterations=500, tol=1e-14),
    )
    (hypergrad,) = solver.hypergradient(sg.BilevelBatch(leader=val, follower=train))
    return hypergrad


def central_difference(game: sg.Game, train, val, coordinate: int, step: float) -> float:
    leader = next(iter(game.leader.parameters()))
    start = [p.detach().clone() for p in game.follower.parameters()]
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, s in zip(game.follower.parameters(), start, strict=True):
                p.copy_(s)
            leader.view(-1)[coordinate] += sign * step
        values.append(value_at_optimum(game, train, val))
        with torch.no_grad():
            leader.view(-1)[coordinate] -= sign * step
    return (values[0] - values[1]) / (2 * step)


def test_hyper_cleaning_hypergradient_matches_finite_differences() -> None:
    x, y = blobs(40, 5, 3, seed=0)
    val_x, val_y = blobs(30, 5, 3, seed=1)
    torch.manual_seed(0)
    game = HyperCleaning(LogisticRegression(5, 3), 40, l2=0.05).to(torch.float64)
    with torch.no_grad():  # weights inside (0, 1), where clip is the identity
        game.leader.weights.uniform_(0.2, 0.8)
    train, val = (x, y, torch.arange(40)), (val_x, val_y)
    hypergrad = implicit_hypergradient(game, train, val)
    assert hypergrad.shape == (40,)
    for coordinate in (0, 7, 23, 39):
        reference = central_difference(game, train, val, coordinate, 1e-4)
        assert hypergrad[coordinate].item() == pytest.approx(reference, rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("per_feature", [True, False])
def test_l2_hypergradient_matches_finite_differences(per_feature: bool) -> None:
    x, y = blobs(60, 4, 3, seed=2)
    val_x, val_y = blobs(40, 4, 3, seed=3)
    torch.manual_seed(1)
    game = L2Regularization(4, 3, per_feature=per_feature, init=-1.0).to(torch.float64)
    with torch.no_grad():
        game.leader.value.add_(0.3 * torch.randn(game.leader.value.shape, dtype=torch.float64))
    hypergrad = implicit_hypergradient(game, (x, y), (val_x, val_y))
    for coordinate in range(hypergrad.numel()):
        reference = central_difference(game, (x, y), (val_x, val_y), coordinate, 1e-4)
        assert hypergrad[coordinate].item() == pytest.approx(reference, rel=1e-4, abs=1e-9)


def test_the_l2_penalty_is_the_documented_one() -> None:
    game = L2Regularization(3, 2, init=0.0)
    with torch.no_grad():
        game.leader.value.copy_(torch.tensor([0.0, np.log(2.0), np.log(4.0)]))
        game.follower.linear.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 0.0]]))
        game.follower.linear.bias.fill_(5.0)  # the bias is not penalized
    x, y = torch.zeros(1, 3), torch.tensor([0])
    data_term = torch.nn.functional.cross_entropy(game.follower(x), y)
    h = game.follower_loss(game.leader, game.follower, (x, y))
    # ½(1·1 + 2·(1 + 4) + 4·1) = 7.5
    assert (h - data_term).item() == pytest.approx(7.5)


def test_a_tiny_hyper_cleaning_finds_the_planted_noise_far_better_than_chance() -> None:
    config = bilevel_problems.RunConfig(
        problem="hyper-cleaning",
        solver="total_gradient",
        dataset="digits",
        train_size=600,
        val_size=200,
        steps=40,
        seed=0,
        threads=1,
    )
    record = bilevel_problems.run(config, progress=False)
    first, last = record["curve"][0], record["curve"][-1]
    clean_share = first["precision"]  # all weights start at 0.5: nothing kept, so 0
    assert clean_share == 0.0
    # about 55 % of the labels are clean (half corrupted, a tenth of those by chance intact):
    # keeping samples at random scores a precision of 0.55
    assert last["precision"] > 0.8 and last["recall"] > 0.8 and last["f1"] > 0.8
    assert last["test_accuracy"] > first["test_accuracy"] + 0.2


def test_split_for_cleaning_is_seeded_and_corrupts_the_requested_share() -> None:
    images = torch.randint(0, 256, (300, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(300) % 10
    test_images, test_labels = images[:50], labels[:50]
    data = split_for_cleaning(
        images, labels, test_images, test_labels, train_size=200, val_size=50, seed=4
    )
    again = split_for_cleaning(
        images, labels, test_images, test_labels, train_size=200, val_size=50, seed=4
    )
    assert torch.equal(data.train[0], again.train[0]) and torch.equal(data.clean, again.clean)
    assert data.train[0].shape == (200, 16) and data.val[0].shape == (50, 16)
    assert data.train[0].mean().abs() < 1e-5  # standardized with the training statistics
    changed = (~data.clean).sum().item()
    assert 100 * 0.8 < changed <= 100  # 100 relabelled, about a tenth kept by chance
    with pytest.raises(ValueError, match="train_size \\+ val_size must be at most the 300"):
        split_for_cleaning(images, labels, test_images, test_labels, train_size=290, val_size=20)
    with pytest.raises(ValueError, match="noise_rate must be in"):
        corrupt_labels(labels, 1.5, 10, torch.Generator())


def test_cleaning_scores_on_a_known_case() -> None:
    weights = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2])
    clean = torch.tensor([True, True, True, False, False])
    scores = cleaning_scores(weights, clean)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert cleaning_scores(torch.zeros(5), clean) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_hyper_cleaning_says_which_stream_goes_where() -> None:
    game = HyperCleaning(LogisticRegression(4, 2), 10)
    with pytest.raises(TypeError, match=r"follower batch is \(x, y, index\).*follower_data="):
        game.follower_loss(game.leader, game.follower, (torch.zeros(2, 4), torch.zeros(2)))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        HyperCleaning(LogisticRegression(4, 2), 0)


def test_split_for_hyperparameters_standardizes_with_the_training_split() -> None:
    features = torch.randn(100, 6) * 3 + 1
    features[:, 2] = 4.0  # a constant feature is only centred
    labels = torch.arange(100) % 3
    data = split_for_hyperparameters(features, labels, train_size=60, val_size=20)
    torch.testing.assert_close(data.train[0].mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    assert data.test[0].shape == (20, 6) and torch.all(data.train[0][:, 2] == 0)
    with pytest.raises(ValueError, match="summing to at most 100"):
        split_for_hyperparameters(features, labels, train_size=90, val_size=10)


def test_tensor_batches_reshuffle_each_pass_and_carry_indices() -> None:
    x = torch.arange(10.0)
    stream = TensorBatches(x, x * 2, batch_size=4, with_index=True, seed=0)
    assert len(stream) == 3
    first = [b for b in stream]
    second = [b for b in stream]
    seen = torch.cat([b[2] for b in first])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(b[0], x[b[2]]) and torch.equal(b[1], 2 * x[b[2]]) for b in first)
    assert not torch.equal(seen, torch.cat([b[2] for b in second]))
    (full,) = list(TensorBatches(x))
    assert torch.equal(full[0], x)
    with pytest.raises(ValueError, match="one length"):
        TensorBatches(x, torch.zeros(3))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_load_mnist_restores_the_original_order(tmp_path: Path) -> None:
    archive = tmp_path / "mnist-png.tar.gz"
    entries = {  # index → digit, written out of order and under the wrong class order
        "train": {2: 4, 0: 5, 1: 0, 10: 1},
        "test": {60001: 2, 60000: 7},
    }
    with tarfile.open(archive, "w:gz") as tar:
        for split, items in entries.items():
            for index, digit in items.items():
                payload = _png(np.full((28, 28), index % 256, dtype=np.uint8))
                info = tarfile.TarInfo(f"mnist-png/{split}/{digit}/{index}.png")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    data = load_mnist(archive)
    assert data["train"].labels.tolist() == [5, 0, 4, 1]
    assert data["train"].images[:, 0, 0, 0].tolist() == [0, 1, 2, 10]
    assert data["test"].labels.tolist() == [7, 2]
    with pytest.raises(FileNotFoundError, match="no MNIST copy"):
        load_mnist(tmp_path / "absent.tar.gz")


def test_the_command_runs_both_problems_at_a_tiny_size(tmp_path: Path, capsys) -> None:
    out = tmp_path / "hc.json"
    code = bilevel_problems.main(
        [
            "hyper-cleaning", "--dataset", "digits", "--train-size", "200", "--val-size", "100",
            "--solver", "bome", "--steps", "3", "--option", "inner_steps=2",
            "--threads", "1", "--output", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    record = json.loads(out.read_text())
    assert record["config"]["solver_options"]["inner_steps"] == 2
    assert record["config"]["solver_options"]["inner_momentum"] == 0.9  # the authors' default
    row = record["curve"][-1]
    assert row["step"] == 3
    assert {"seconds", "test_accuracy", "test_loss", "f1", "precision", "recall"} <= set(row)
    assert "seed 1; config" in capsys.readouterr().out
    out2 = tmp_path / "hp.json"
    code = bilevel_problems.main(
        [
            "hyperparameters", "--train-size", "300", "--val-size", "200", "--solver", "soba",
            "--steps", "3", "--scalar", "--output", str(out2),
        ]
    )  # fmt: skip
    assert code == 0
    assert {"val_loss", "test_accuracy"} <= set(json.loads(out2.read_text())["curve"][-1])
    table = bilevel_problems.compare([out, out2], tmp_path / "both", target=0.5)
    assert table.count("\n") == 4 and (tmp_path / "both.md").exists()
    assert bilevel_problems.main(["hyper-cleaning", "--output", str(out)]) == 2
    assert "needs --data-dir" in capsys.readouterr().err
    assert (
        bilevel_problems.main(
            [
                "hyper-cleaning",
                "--dataset",
                "digits",
                "--solver",
                "bome",
                "--option",
                "u1=0.1",
                "--output",
                str(out),
            ]
        )
        == 2
    )
    assert "use eta" in capsys.readouterr().err


def test_class_reweighting_learns_to_upweight_the_rare_classes() -> None:
    config = bilevel_problems.RunConfig(
        problem="reweighting", solver="total_gradient", dataset="digits", model="mlp",
        largest=100, imbalance=20.0, val_per_class=10, steps=150, seed=0, threads=1,
        evaluate_every=50,
    )  # fmt: skip
    game, solver, data = bilevel_problems.build(config)
    assert data.counts.tolist() == long_tailed_counts(100, 10, 20.0)
    sg.solve(
        game,
        solver,
        steps=config.steps,
        leader_data=data.leader_batches(128, seed=1),
        follower_data=data.follower_batches(128, seed=0),
        progress=False,
    )
    metrics = data.metrics(game)
    weights = game.leader().detach()
    # the rarest three classes weigh more than the three most common ones, as 1/n_c does
    assert weights[-3:].mean() > weights[:3].mean()
    assert metrics["weight_rank_correlation"] > 0.5
    assert weights.mean().item() == pytest.approx(1.0)


def test_imbalanced_split_counts_and_reference_weights() -> None:
    assert long_tailed_counts(100, 3, 100.0) == [100, 10, 1]
    reference = inverse_frequency_weights(torch.tensor([100, 10, 1]))
    torch.testing.assert_close(reference, torch.tensor([1, 10, 100]) * 3 / 111.0)
    images = torch.randint(0, 256, (90, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(90) % 3
    data = split_imbalanced(
        images, labels, images[:9], labels[:9], largest=20, imbalance=4.0, val_per_class=5
    )
    assert torch.bincount(data.train[1]).tolist() == [20, 10, 5]
    assert torch.bincount(data.val[1]).tolist() == [5, 5, 5]
    train_rows = {tuple(r.tolist()) for r in data.train[0].flatten(1)}
    assert not train_rows & {tuple(r.tolist()) for r in data.val[0].flatten(1)}
    with pytest.raises(ValueError, match="class 0 has 30 images"):
        split_imbalanced(images, labels, images, labels, largest=28, imbalance=2, val_per_class=5)
    game = ClassReweighting(LogisticRegression(16, 3), 3)
    game.leader.logits.data = torch.tensor([0.0, 0.0, 0.0])
    scores = data.metrics(game)
    assert scores["weight_rank_correlation"] == 0.0  # uniform weights rank nothing


def test_the_hyper_cleaning_hypergradient_equals_torchopts_implicit_one() -> None:
    """TorchOpt's implicit differentiation (custom_root + CG, 10 iterations from zero) and our
    TotalGradient (CG(10, tol=0), cold) solve the same system: the same hypergradient."""
    torchopt = pytest.importorskip("torchopt")
    x, y = blobs(50, 6, 3, seed=4)
    val_x, val_y = blobs(30, 6, 3, seed=5)
    torch.manual_seed(2)
    game = HyperCleaning(LogisticRegression(6, 3), 50, l2=0.01).to(torch.float64)
    with torch.no_grad():
        game.leader.weights.uniform_(0.1, 0.9)
    solver = sg.TotalGradient(
        game,
        torch.optim.SGD(game.leader.parameters(), lr=0.0),
        torch.optim.SGD(game.follower.parameters(), lr=0.0),
        linear_solver=sg.solvers.CG(max_iterations=10, tol=0.0),
        warm_start=False,
    )
    batch = sg.BilevelBatch(leader=(val_x, val_y), follower=(x, y, torch.arange(50)))
    (ours,) = solver.hypergradient(batch)

    linear = game.follower.linear
    shape, split = linear.weight.shape, linear.weight.numel()
    theta = torch.cat([linear.weight.detach().reshape(-1), linear.bias.detach()])

    def logits(theta_, inputs):
        return inputs @ theta_[:split].view(shape).T + theta_[split:]

    def follower_loss(theta_, w_):
        per_sample = torch.nn.functional.cross_entropy(logits(theta_, x), y, reduction="none")
        return torch.mean(w_ * per_sample) + 0.01 * theta_.pow(2).sum()

    optimality = torch.func.grad(follower_loss, argnums=0)

    @torchopt.diff.implicit.custom_root(
        optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=10, rtol=0.0)
    )
    def at_current(theta_init, w_):
        return theta_init  # the implicit gradient at the current follower, as ours

    w = game.leader.weights.detach().clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchOpt calls functorch.vjp
        loss = torch.nn.functional.cross_entropy(logits(at_current(theta, w), val_x), val_y)
        (theirs,) = torch.autograd.grad(loss, w)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-12)
