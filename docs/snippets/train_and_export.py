from stackelberg.data import load_dataset
from stackelberg.models import ConvNet, UNetGenerator
from stackelberg.unlearnable import UnlearnableGame
from stackelberg.unlearnable.export import export_npz, poison_images
from stackelberg.unlearnable.training import GeneratorTraining, TrainingConfig

data = load_dataset("digits")  # or "cifar10", "cifar100", "folder"
game = UnlearnableGame(
    UNetGenerator(8 / 255, in_channels=1, widths=(16, 32, 64)),
    ConvNet(in_channels=1, num_classes=10),
    epsilon=8 / 255,
)
training = GeneratorTraining(
    game, TrainingConfig(epochs=2, batch_size=64), data["train"], run_dir="results/my-run"
)  # checkpoint.pt every epoch
training.resume()  # continue if interrupted
training.run()
poisoned = poison_images(game.leader, data["train"].images)
export_npz(
    "results/my-run/poisoned.npz",
    poisoned,
    data["train"].images,
    data["train"].labels,
    epsilon=8 / 255,
)  # uint8, rounded; JSON manifest beside
