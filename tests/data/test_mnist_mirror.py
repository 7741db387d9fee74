"""Real MNIST from the shared offline mirror (``<repo>/../shared/data``), when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipbench.data import get_dataset, load_dataset, prepare_dataset, take_tensors

SHARED_MNIST_MIRROR = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # <repo>/../shared/data

pytestmark = pytest.mark.skipif(
    not (SHARED_MNIST_MIRROR / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"offline MNIST mirror not found at {SHARED_MNIST_MIRROR} (expects MNIST/raw/*.gz)",
)


def test_checksums_come_from_torchvision() -> None:
    from torchvision.datasets import MNIST

    assert get_dataset("mnist").checksums == dict(MNIST.resources)


def test_prepare_real_mnist_from_the_mirror(tmp_path: Path, fakes, _offline: list[str]) -> None:
    before = fakes.snapshot(SHARED_MNIST_MIRROR)
    manifest = prepare_dataset("mnist", tmp_path, mirror=SHARED_MNIST_MIRROR)
    assert _offline == []  # the network was never tried
    assert fakes.snapshot(SHARED_MNIST_MIRROR) == before  # the mirror was not modified
    assert manifest["splits"]["train"]["count"] == 60000 and manifest["splits"]["test"]["count"] == 10000
    assert all(record["verified"] for record in manifest["inputs"]) and len(manifest["inputs"]) == 4
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        copied = tmp_path / "raw" / "MNIST" / "raw" / name
        assert copied.read_bytes() == (SHARED_MNIST_MIRROR / "MNIST" / "raw" / name).read_bytes()

    splits = load_dataset("mnist", tmp_path)
    x_train, y_train = take_tensors(splits.train, None)
    x_test, y_test = take_tensors(splits.test, 500)
    assert x_train.shape == (60000, 1, 28, 28) and x_train.dtype == torch.float32
    assert x_test.shape == (500, 1, 28, 28)
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9] and y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert abs(x_train.mean().item() - 0.1307) < 5e-4
