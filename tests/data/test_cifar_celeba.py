"""CIFAR-10 and CelebA Eyeglasses on small generated files in their real on-disk formats."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lipbench.data import (
    ChecksumError,
    DatasetUnavailableError,
    get_dataset,
    load_dataset,
    prepare_dataset,
    take_tensors,
)


def _use(monkeypatch: pytest.MonkeyPatch, name: str, checksums: dict[str, str]) -> None:
    dataset = get_dataset(name)
    monkeypatch.setattr(dataset, "checksums", {**dataset.checksums, **checksums})


@pytest.mark.parametrize("extracted", [False, True], ids=["tarball", "extracted-folder"])
def test_cifar10_from_mirror(tmp_path: Path, monkeypatch, fakes, _offline, extracted: bool) -> None:
    fake = fakes.cifar_mirror(tmp_path / "mirror", extracted=extracted)
    _use(monkeypatch, "cifar10", fake.checksums)
    before = fakes.snapshot(fake.root)
    manifest = prepare_dataset("cifar10", tmp_path / "data", mirror=fake.root)
    assert fakes.snapshot(fake.root) == before and _offline == []
    assert manifest["class_names"][0] == "airplane" and manifest["splits"]["train"]["count"] == 15
    assert (tmp_path / "data" / "raw" / "cifar-10-batches-py" / "data_batch_5").is_file()
    splits = load_dataset("cifar10", tmp_path / "data")
    for split, dataset in (("train", splits.train), ("test", splits.test)):
        data, labels = fake.expected[split]
        x, y = take_tensors(dataset, None)
        assert x.shape == (len(labels), 3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(data).reshape(-1, 3, 32, 32).float() / 255)
        assert y.tolist() == labels.tolist()


def test_cifar10_layout_matches_torchvision(tmp_path: Path, monkeypatch, fakes) -> None:
    import torchvision.datasets.cifar as tv_cifar

    fake = fakes.cifar_mirror(tmp_path / "mirror")
    _use(monkeypatch, "cifar10", fake.checksums)
    prepare_dataset("cifar10", tmp_path / "data", mirror=fake.root)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: True)  # fake files, fake md5s
    CIFAR10 = tv_cifar.CIFAR10
    oracle = CIFAR10(str(tmp_path / "data" / "raw"), train=False, download=False)
    x, y = take_tensors(load_dataset("cifar10", tmp_path / "data").test, None)
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(oracle.data).permute(0, 3, 1, 2))
    assert y.tolist() == list(oracle.targets)


def test_cifar10_production_checksums_are_torchvisions() -> None:
    from torchvision.datasets import CIFAR10

    checksums = get_dataset("cifar10").checksums
    assert checksums["cifar-10-python.tar.gz"] == CIFAR10.tgz_md5
    assert all(checksums[name] == md5 for name, md5 in CIFAR10.train_list + CIFAR10.test_list)


def test_cifar10_truncated_tarball(tmp_path: Path, monkeypatch, fakes) -> None:
    fake = fakes.cifar_mirror(tmp_path / "mirror")
    _use(monkeypatch, "cifar10", fake.checksums)
    archive = fake.root / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("cifar10", tmp_path / "data", mirror=fake.root)
    assert "cifar-10-python.tar.gz" in str(caught.value)
    assert fake.checksums["cifar-10-python.tar.gz"] in str(caught.value) and fakes.md5(archive) in str(caught.value)
    assert fakes.files_under(tmp_path / "data") == [] and not fakes.leftovers(tmp_path / "data")


def test_cifar10_corrupt_batch_inside_a_valid_tarball(tmp_path: Path, monkeypatch, fakes) -> None:
    fake = fakes.cifar_mirror(tmp_path / "mirror")
    _use(monkeypatch, "cifar10", {**fake.checksums, "data_batch_2": "0" * 32})
    with pytest.raises(ChecksumError, match=r"cifar-10-batches-py/data_batch_2.*expected md5 0{32}"):
        prepare_dataset("cifar10", tmp_path / "data", mirror=fake.root)
    data_dir = tmp_path / "data"
    assert not (data_dir / "raw" / "cifar-10-batches-py").exists()
    assert not (data_dir / "prepared").exists() and not fakes.leftovers(data_dir)


def test_cifar10_tarball_without_the_folder(tmp_path: Path, monkeypatch, fakes) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(__file__, arcname="other/readme.txt")
    _use(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": fakes.md5(mirror / "cifar-10-python.tar.gz")})
    with pytest.raises(ValueError, match="does not contain the folder cifar-10-batches-py"):
        prepare_dataset("cifar10", tmp_path / "data", mirror=mirror)
    assert not (tmp_path / "data" / "prepared").exists() and not fakes.leftovers(tmp_path / "data")


@pytest.mark.parametrize("as_zip", [False, True], ids=["image-folder", "zip"])
def test_celeba_from_mirror(tmp_path: Path, monkeypatch, fakes, _offline, as_zip: bool) -> None:
    fake = fakes.celeba_mirror(tmp_path / "mirror", as_zip=as_zip)
    _use(monkeypatch, "celeba_eyeglasses", fake.checksums)
    before = fakes.snapshot(fake.root)
    manifest = prepare_dataset("celeba_eyeglasses", tmp_path / "data", mirror=fake.root)
    assert fakes.snapshot(fake.root) == before and _offline == []
    assert ("md5 verified" in manifest["images"]["verified"]) == as_zip
    splits = load_dataset("celeba_eyeglasses", tmp_path / "data")
    names, parts, glasses = (fake.expected[k] for k in ("names", "partitions", "eyeglasses"))
    assert len(splits.train) == parts.count(0) and len(splits.test) == parts.count(2)  # valid dropped
    assert splits.test.filenames == [n for n, p in zip(names, parts) if p == 2]
    x, y = take_tensors(splits.train, None)
    assert x.shape == (4, 3, 128, 128) and x.dtype == torch.float32 and splits.info.binary
    assert y.tolist() == [g for g, p in zip(glasses, parts) if p == 0]
    assert manifest["splits"]["train"]["class_counts"] == np.bincount(y.numpy(), minlength=2).tolist()
    # the red bands (top and bottom 20 rows of 218) are cropped away: blue everywhere, up to
    # JPEG ringing at the edges (a wrong crop would leave rows of full red)
    assert x[:, 0].max() < 0.4 and x[:, 0, 2:-2].max() < 0.1 and x[:, 2, 2:-2].min() > 0.9
    expected_green = fake.expected["images"][names[1]][100, 89, 1] / 255
    assert abs(x[1, 1].mean().item() - expected_green) < 0.03


def test_celeba_valid_partition_param(tmp_path: Path, monkeypatch, fakes) -> None:
    fake = fakes.celeba_mirror(tmp_path / "mirror")
    _use(monkeypatch, "celeba_eyeglasses", fake.checksums)
    params = {"valid_partition": "train"}
    prepare_dataset("celeba_eyeglasses", tmp_path / "data", params, mirror=fake.root)
    splits = load_dataset("celeba_eyeglasses", tmp_path / "data", params)
    assert len(splits.train) == 6 and len(splits.test) == 2
    with pytest.raises(ValueError, match="'valid_partition'.*'drop' or 'train'"):
        prepare_dataset("celeba_eyeglasses", tmp_path / "data", {"valid_partition": "test"})


def test_celeba_labels_match_torchvision(tmp_path: Path, monkeypatch, fakes) -> None:
    from torchvision.datasets import CelebA

    fake = fakes.celeba_mirror(tmp_path / "mirror")
    _use(monkeypatch, "celeba_eyeglasses", fake.checksums)
    prepare_dataset("celeba_eyeglasses", tmp_path / "data", mirror=fake.root)
    monkeypatch.setattr(CelebA, "_check_integrity", lambda self: True)  # fake files, fake md5s
    oracle = CelebA(str(tmp_path / "data" / "raw"), split="test", target_type="attr", download=False)
    splits = load_dataset("celeba_eyeglasses", tmp_path / "data")
    assert splits.test.filenames == list(oracle.filename)
    assert splits.test.labels.tolist() == oracle.attr[:, oracle.attr_names.index("Eyeglasses")].tolist()


def test_celeba_missing_image_leaves_no_extracted_data(tmp_path: Path, monkeypatch, fakes) -> None:
    fake = fakes.celeba_mirror(tmp_path / "mirror")
    (fake.root / "celeba" / "img_align_celeba" / "000007.jpg").unlink()
    _use(monkeypatch, "celeba_eyeglasses", fake.checksums)
    with pytest.raises(FileNotFoundError, match="1 of the 6 images.*000007.jpg"):
        prepare_dataset("celeba_eyeglasses", tmp_path / "data", mirror=fake.root)
    assert not (tmp_path / "data" / "raw" / "celeba" / "img_align_celeba").exists()
    assert not (tmp_path / "data" / "prepared").exists() and not fakes.leftovers(tmp_path / "data")


def test_celeba_corrupt_annotation_and_no_network(tmp_path: Path, monkeypatch, fakes, _offline) -> None:
    fake = fakes.celeba_mirror(tmp_path / "mirror")
    _use(monkeypatch, "celeba_eyeglasses", fake.checksums)
    attr = fake.root / "celeba" / "list_attr_celeba.txt"
    attr.write_text(attr.read_text().replace("-1", " 1", 1))
    with pytest.raises(ChecksumError, match="list_attr_celeba.txt"):
        prepare_dataset("celeba_eyeglasses", tmp_path / "data", mirror=fake.root)
    assert not (tmp_path / "data" / "raw" / "celeba" / "list_attr_celeba.txt").exists()
    with pytest.raises(DatasetUnavailableError) as caught:
        prepare_dataset("celeba_eyeglasses", tmp_path / "other")
    assert "'celeba_eyeglasses'" in str(caught.value) and "celeba/img_align_celeba.zip" in str(caught.value)
    assert "LIPBENCH_DATA_MIRROR" in str(caught.value) and "drive" in str(caught.value)
    assert not (tmp_path / "other").exists() and len(_offline) == 1
