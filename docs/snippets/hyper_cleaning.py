"""Data hyper-cleaning on scikit-learn's digits: which training labels can be trusted?"""

import torch

import stackelberg as sg
from stackelberg.games.hyper_cleaning import HyperCleaning, split_for_cleaning
from stackelberg.models import LogisticRegression

torch.manual_seed(0)
digits = sg.data.load_digits()
data = split_for_cleaning(
    digits["train"].images, digits["train"].labels,  # half of these labels are made random
    digits["test"].images, digits["test"].labels,
    train_size=600, val_size=200, noise_rate=0.5, seed=0,
)  # fmt: skip
game = HyperCleaning(LogisticRegression(64, 10), num_samples=600)  # w ∈ [0, 1]^600
solver = sg.solvers.make(
    "total_gradient",
    game,
    torch.optim.SGD(game.leader.parameters(), lr=100.0, momentum=0.9),
    torch.optim.SGD(game.follower.parameters(), lr=0.01, momentum=0.9),
    linear_solver=sg.solvers.CG(max_iterations=10),  # warm-started from the last step's v
    follower_steps=10,
)
history = sg.solve(
    game,
    solver,
    steps=40,
    leader_data=data.leader_batches(),  # clean validation set: the leader's loss
    follower_data=data.follower_batches(),  # noisy training set (x, y, index): the follower's
    evaluate=data.metrics,  # test accuracy and loss, precision / recall / F1 of w > 0.5
    evaluate_every=10,
)
for row in history.evaluations:
    print(f"step {row['step']:3.0f}  {row['seconds']:5.2f} s  test accuracy "
          f"{row['test_accuracy']:.3f}  F1 {row['f1']:.3f}")  # fmt: skip
