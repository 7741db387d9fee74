"""(Fashion-)MNIST format on generated files: mirror, download, corrupt files, no network."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from lipbench.data import (
    ChecksumError,
    DatasetNotPreparedError,
    DatasetUnavailableError,
    archives,
    get_dataset,
    load_dataset,
    prepare_dataset,
    take_tensors,
)

FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes):
    fake = fakes.idx_mirror(tmp_path / "mirror", "MNIST")
    monkeypatch.setattr(get_dataset("mnist"), "checksums", fake.checksums)
    return fake


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_prepare_from_mirror_matches_generated_files(tmp_path: Path, monkeypatch, fakes, name: str) -> None:
    fake = fakes.idx_mirror(tmp_path / "mirror", FOLDERS[name], seed=len(name))
    monkeypatch.setattr(get_dataset(name), "checksums", fake.checksums)
    before = fakes.snapshot(fake.root)
    manifest = prepare_dataset(name, tmp_path / "data", mirror=fake.root)
    assert fakes.snapshot(fake.root) == before
    assert [r["file"] for r in manifest["inputs"]] == [f"{FOLDERS[name]}/raw/{f}" for f in fake.checksums]
    splits = load_dataset(name, tmp_path / "data")
    for split, dataset in (("train", splits.train), ("test", splits.test)):
        images, labels = fake.expected[split]
        x, y = take_tensors(dataset, None)
        assert x.shape == (len(labels), 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(images).unsqueeze(1).float() / 255)
        assert y.tolist() == labels.tolist()


def test_production_checksums_are_torchvisions() -> None:
    from torchvision.datasets import FashionMNIST

    assert get_dataset("fashion_mnist").checksums == dict(FashionMNIST.resources)
    assert get_dataset("fashion_mnist").resources[0].urls[0].startswith(FashionMNIST.mirrors[0])


def test_env_var_mirror_and_argument_precedence(tmp_path: Path, monkeypatch, fake_mnist, _offline) -> None:
    monkeypatch.setenv("LIPBENCH_DATA_MIRROR", str(fake_mnist.root))
    prepare_dataset("mnist", tmp_path / "a")  # mirror from the environment
    monkeypatch.setenv("LIPBENCH_DATA_MIRROR", str(tmp_path / "nowhere"))
    prepare_dataset("mnist", tmp_path / "b", mirror=fake_mnist.root)  # the argument wins
    assert _offline == []
    with pytest.raises(DatasetUnavailableError, match="nowhere.*does not exist"):
        prepare_dataset("mnist", tmp_path / "c")
    with pytest.raises(DatasetUnavailableError, match="downloading failed"):
        prepare_dataset("mnist", tmp_path / "d", mirror="")  # "" disables the mirror
    assert len(_offline) == 2  # both URLs of the first file were tried, then it stopped


def test_mirror_missing_a_file_never_downloads(tmp_path: Path, fake_mnist, _offline) -> None:
    (fake_mnist.root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetUnavailableError) as caught:
        prepare_dataset("mnist", tmp_path / "data", mirror=fake_mnist.root)
    message = str(caught.value)
    assert "has no MNIST/raw/t10k-labels-idx1-ubyte.gz" in message and str(fake_mnist.root) in message
    assert _offline == []
    assert not (tmp_path / "data" / "prepared" / "mnist").exists()


def test_truncated_archive_raises_checksum_error_and_leaves_nothing(tmp_path: Path, fake_mnist, fakes) -> None:
    archive = fake_mnist.root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:-100])
    actual = fakes.md5(archive)
    data_dir = tmp_path / "data"
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("mnist", data_dir, mirror=fake_mnist.root)
    error = caught.value
    assert "train-images-idx3-ubyte.gz" in str(error)
    assert fake_mnist.checksums["train-images-idx3-ubyte.gz"] in str(error) and actual in str(error)
    assert (error.expected, error.actual) == (fake_mnist.checksums["train-images-idx3-ubyte.gz"], actual)
    assert not (data_dir / "raw" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()
    assert not (data_dir / "prepared").exists() and not fakes.leftovers(data_dir)
    with pytest.raises(DatasetNotPreparedError):
        load_dataset("mnist", data_dir)


def test_corrupt_file_already_in_raw_is_fetched_again(tmp_path: Path, fake_mnist) -> None:
    stale = tmp_path / "data" / "raw" / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"garbage")
    prepare_dataset("mnist", tmp_path / "data", mirror=fake_mnist.root)
    assert stale.read_bytes() == (fake_mnist.root / "MNIST" / "raw" / stale.name).read_bytes()


def test_no_network_and_no_mirror_is_one_clear_error(tmp_path: Path, monkeypatch, fakes) -> None:
    calls: list[tuple[str, float]] = []

    def unreachable(url: str, destination: Path, timeout: float = 0) -> None:
        calls.append((url, timeout))
        destination.write_bytes(b"partial")  # a half-written download must not survive
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(archives, "download", unreachable)
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetUnavailableError) as caught:
        prepare_dataset("mnist", data_dir)
    message = str(caught.value)
    assert "'mnist'" in message and "name resolution" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz" in message
    assert "LIPBENCH_DATA_MIRROR" in message and "MNIST/raw/train-images-idx3-ubyte.gz" in message
    assert caught.value.dataset == "mnist" and len(caught.value.urls) == 8
    assert 0 < max(timeout for _, timeout in calls) <= 60 and len(calls) == 2
    assert not data_dir.exists()


def test_download_uses_torchvision_urls_and_falls_back(tmp_path: Path, monkeypatch, fake_mnist) -> None:
    served = {f"https://ossci-datasets.s3.amazonaws.com/mnist/{n}": n for n in fake_mnist.checksums}
    fetched: list[str] = []

    def server(url: str, destination: Path, timeout: float = 0) -> None:
        fetched.append(url)
        name = url.rsplit("/", 1)[1]
        if name.startswith("t10k-images"):  # first mirror down for this file: use the second one
            if url.startswith("https://ossci"):
                raise urllib.error.HTTPError(url, 503, "unavailable", None, None)  # type: ignore[arg-type]
        elif url not in served:
            raise AssertionError(f"unexpected URL {url}")
        shutil.copyfile(fake_mnist.root / "MNIST" / "raw" / name, destination)

    monkeypatch.setattr(archives, "download", server)
    manifest = prepare_dataset("mnist", tmp_path / "data", mirror="")
    assert manifest["splits"]["test"]["count"] == 7
    assert "http://yann.lecun.com/exdb/mnist/t10k-images-idx3-ubyte.gz" in fetched and len(fetched) == 5
    images, _ = fake_mnist.expected["test"]
    x, _ = take_tensors(load_dataset("mnist", tmp_path / "data").test, 2)
    assert torch.equal((x * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(images[:2]))


def test_download_with_wrong_content_is_a_checksum_error(tmp_path: Path, monkeypatch, fake_mnist, fakes) -> None:
    monkeypatch.setattr(archives, "download", lambda url, destination, timeout=0: destination.write_bytes(b"<html>"))
    with pytest.raises(ChecksumError, match="expected md5"):
        prepare_dataset("mnist", tmp_path / "data")
    assert fakes.files_under(tmp_path / "data") == []


def test_bad_idx_content_with_matching_checksum_fails_cleanly(tmp_path: Path, monkeypatch, fakes) -> None:
    fake = fakes.idx_mirror(tmp_path / "mirror", "MNIST")
    fakes.write_idx_gz(fake.root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    fake.checksums["train-labels-idx1-ubyte.gz"] = fakes.md5(fake.root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz")
    monkeypatch.setattr(get_dataset("mnist"), "checksums", fake.checksums)
    with pytest.raises(ValueError, match="do not match"):
        prepare_dataset("mnist", tmp_path / "data", mirror=fake.root)
    assert not (tmp_path / "data" / "prepared").exists() and not fakes.leftovers(tmp_path / "data")


def test_params_are_validated_before_fetching(tmp_path: Path, _offline) -> None:
    with pytest.raises(ValueError, match="'mnist' takes no parameters"):
        prepare_dataset("mnist", tmp_path / "data", {"n_samples": 10})
    assert _offline == [] and not (tmp_path / "data").exists()
