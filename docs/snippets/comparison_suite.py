from stackelberg.data import load_dataset
from stackelberg.unlearnable.attacks import craft_poison
from stackelberg.unlearnable.defenses import make_defense
from stackelberg.unlearnable.presets import build_classifier
from stackelberg.unlearnable.victim import VictimSchedule, train_victim

data = load_dataset("digits")
train, test = data["train"], data["test"]
poison = craft_poison("em", train.images, train.labels, 8 / 255, num_classes=10)
print(poison.info)  # rounds, the surrogate's accuracy on the poisons, converged
result = train_victim(
    build_classifier("convnet-small", in_channels=1, num_classes=10),
    poison.images,
    train.labels,
    test.images,
    test.labels,
    VictimSchedule.scaled(2),
    defense=make_defense("jpeg", num_classes=10),
)
print(f"victim clean test accuracy with JPEG squeezing: {result.final:.3f}")
