"""Registry, static dataset info and the tensor helpers of lipbench.data."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import lipbench.data as data
from lipbench.data import DATASETS, DatasetInfo, get_dataset, list_datasets, register_dataset, take_tensors
from lipbench.registry import RegistryError

BUILTIN = {"moons", "digits", "mnist", "fashion_mnist", "cifar10", "celeba_eyeglasses"}


def test_builtin_datasets_are_registered() -> None:
    assert BUILTIN <= set(list_datasets())
    assert list_datasets() == sorted(list_datasets())


def test_public_api_is_exported() -> None:
    assert set(data.__all__) == {name for name in data.__all__ if hasattr(data, name)}
    assert {"get_dataset", "list_datasets", "prepare_dataset", "load_dataset", "take_tensors"} <= set(data.__all__)


@pytest.mark.parametrize("name", DATASETS.names())
def test_info_is_consistent(name: str) -> None:
    dataset = get_dataset(name)
    info = dataset.info
    assert isinstance(info, DatasetInfo)
    assert info.name == name
    assert isinstance(info.input_shape, tuple) and info.input_shape
    assert all(type(d) is int and d > 0 for d in info.input_shape)
    assert type(info.num_classes) is int and info.num_classes >= 2
    assert info.binary == (info.num_classes == 2)
    assert info.source and isinstance(info.needs_download, bool)
    assert callable(dataset.prepare) and callable(dataset.load)


def test_expected_shapes_and_classes() -> None:
    expected = {
        "moons": ((2,), 2, False),
        "digits": ((1, 8, 8), 10, False),
        "mnist": ((1, 28, 28), 10, True),
        "fashion_mnist": ((1, 28, 28), 10, True),
        "cifar10": ((3, 32, 32), 10, True),
        "celeba_eyeglasses": ((3, 128, 128), 2, True),
    }
    for name, (shape, classes, download) in expected.items():
        info = get_dataset(name).info
        assert (info.input_shape, info.num_classes, info.needs_download) == (shape, classes, download), name


def test_info_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        DatasetInfo("x", 1, (2,), "here", False)
    with pytest.raises(ValueError, match="input_shape"):
        DatasetInfo("x", 2, (0, 3), "here", False)


def test_duplicate_registration_raises() -> None:
    with pytest.raises(RegistryError, match="duplicate dataset name 'moons'"):
        register_dataset("moons")(type(get_dataset("moons")))
    assert get_dataset("moons").info.name == "moons"


def test_register_checks_name_matches_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))  # restored after the test
    with pytest.raises(ValueError, match="info.name 'digits'"):
        register_dataset("other")(get_dataset("digits"))

    class Tiny:
        info = DatasetInfo("tiny", 3, (4,), "test", False)

        def prepare(self, data_dir, params=None, mirror=None):  # pragma: no cover - never called
            return {}

        def load(self, data_dir, params=None):  # pragma: no cover - never called
            raise NotImplementedError

    register_dataset("tiny")(Tiny)
    assert isinstance(get_dataset("tiny"), Tiny) and "tiny" in list_datasets()


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(RegistryError) as caught:
        get_dataset("imagenet")
    message = str(caught.value)
    assert "imagenet" in message
    for name in BUILTIN:
        assert name in message


def test_take_tensors_on_tensor_dataset() -> None:
    dataset = TensorDataset(torch.arange(10.0).reshape(5, 2), torch.arange(5))
    x, y = take_tensors(dataset, 3)
    assert torch.equal(x, torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])) and torch.equal(y, torch.arange(3))
    assert take_tensors(dataset, None)[0].shape == (5, 2)
    assert take_tensors(dataset, 100)[1].shape == (5,)
    with pytest.raises(ValueError, match="limit"):
        take_tensors(dataset, -1)


class _Lazy(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        return torch.full((1, 2, 2), float(index)), index % 2


def test_take_tensors_on_lazy_dataset() -> None:
    x, y = take_tensors(_Lazy(), 3)
    assert x.shape == (3, 1, 2, 2) and x.dtype == torch.float32
    assert torch.equal(x[:, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert y.dtype == torch.int64 and y.tolist() == [0, 1, 0]
    empty_x, empty_y = take_tensors(_Lazy(), 0)
    assert empty_x.shape == (0, 1, 2, 2) and empty_y.shape == (0,)


def test_documented_sources_and_folders_match_torchvision():
    from torchvision import datasets

    from lipbench.data import celeba, torchvision_sets

    assert torchvision_sets.SOURCES["mnist"] == datasets.MNIST.mirrors[0]
    assert torchvision_sets.SOURCES["fashion_mnist"] == datasets.FashionMNIST.mirrors[0]
    assert torchvision_sets.SOURCES["cifar10"] == datasets.CIFAR10.url
    assert torchvision_sets._CIFAR_FOLDER == datasets.CIFAR10.base_folder
    assert celeba.BASE_FOLDER == datasets.CelebA.base_folder


def test_importing_the_registry_does_not_import_torchvision():
    import subprocess
    import sys

    code = "import sys, lipbench.data, lipbench.methods; print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
