"""CIFAR-100 and EuroSAT on small generated files in their real on-disk formats."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipbench.data import (
    ChecksumError,
    DatasetUnavailableError,
    get_dataset,
    load_dataset,
    prepare_dataset,
    take_tensors,
    torchvision_sets,
)
from lipbench.data import eurosat as eurosat_module


def _use(monkeypatch: pytest.MonkeyPatch, name: str, checksums: dict[str, str]) -> None:
    dataset = get_dataset(name)
    monkeypatch.setattr(dataset, "checksums", {**dataset.checksums, **checksums})


def _use_eurosat(monkeypatch: pytest.MonkeyPatch, fake) -> None:
    _use(monkeypatch, "eurosat", fake.checksums)
    monkeypatch.setattr(get_dataset("eurosat"), "class_counts", fake.expected["counts"])


def _nothing_left(fakes, data_dir: Path) -> None:
    assert fakes.files_under(data_dir) == [] and not fakes.leftovers(data_dir)


def test_registry_entries() -> None:
    from lipbench.methods import default_architecture

    for name, shape, classes, architecture in (
        ("cifar100", (3, 32, 32), 100, "cifar10_cnn"),
        ("eurosat", (3, 64, 64), 10, "eurosat_cnn"),
    ):
        info = get_dataset(name).info
        assert (info.input_shape, info.num_classes, info.needs_download, info.bounds) == (shape, classes, True, (0.0, 1.0))
        assert default_architecture(name, shape) == architecture


# ----------------------------------------------------------------------------- CIFAR-100


@pytest.mark.parametrize("extracted", [False, True], ids=["tarball", "extracted-folder"])
def test_cifar100_from_mirror(tmp_path: Path, monkeypatch, fakes, _offline, extracted: bool) -> None:
    fake = fakes.cifar100_mirror(tmp_path / "mirror", extracted=extracted)
    _use(monkeypatch, "cifar100", fake.checksums)
    before = fakes.snapshot(fake.root)
    manifest = prepare_dataset("cifar100", tmp_path / "data", mirror=fake.root)
    assert fakes.snapshot(fake.root) == before and _offline == []
    assert manifest["class_names"] == fake.expected["class_names"] and len(manifest["class_names"]) == 100
    assert manifest["splits"]["train"]["count"] == 7 and manifest["splits"]["test"]["count"] == 5
    assert [record["file"] for record in manifest["inputs"]][-3:] == [f"cifar-100-python/{n}" for n in ("train", "test", "meta")]
    assert (tmp_path / "data" / "raw" / "cifar-100-python" / "meta").is_file()
    splits = load_dataset("cifar100", tmp_path / "data")
    assert splits.info.num_classes == 100 and not splits.info.binary
    for split, dataset in (("train", splits.train), ("test", splits.test)):
        data, labels = fake.expected[split]
        x, y = take_tensors(dataset, None)
        assert x.shape == (len(labels), 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, torch.from_numpy(data).reshape(-1, 3, 32, 32).float() / 255)
        assert y.tolist() == labels.tolist()  # the fine labels, 99 included
    assert torch.load(tmp_path / "data" / "prepared" / "cifar100" / "train.pt")["x"].dtype == torch.uint8


def test_cifar100_layout_matches_torchvision(tmp_path: Path, monkeypatch, fakes) -> None:
    import torchvision.datasets.cifar as tv_cifar

    fake = fakes.cifar100_mirror(tmp_path / "mirror")
    _use(monkeypatch, "cifar100", fake.checksums)
    manifest = prepare_dataset("cifar100", tmp_path / "data", mirror=fake.root)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: True)  # fake files, fake md5s
    for train, split in ((True, "train"), (False, "test")):
        oracle = tv_cifar.CIFAR100(str(tmp_path / "data" / "raw"), train=train, download=False)
        x, y = take_tensors(getattr(load_dataset("cifar100", tmp_path / "data"), split), None)
        assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(oracle.data).permute(0, 3, 1, 2))
        assert y.tolist() == list(oracle.targets)
        assert manifest["class_names"] == oracle.classes


def test_cifar100_production_tables_are_torchvisions() -> None:
    from torchvision.datasets import CIFAR100

    dataset = get_dataset("cifar100")
    checksums = dataset.checksums
    assert checksums["cifar-100-python.tar.gz"] == CIFAR100.tgz_md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert all(checksums[name] == md5 for name, md5 in CIFAR100.train_list + CIFAR100.test_list)
    assert checksums["meta"] == CIFAR100.meta["md5"] and dataset.meta_file == "meta"
    assert dataset.resources[0].path == CIFAR100.filename and dataset.resources[0].urls == (CIFAR100.url,)
    assert torchvision_sets.SOURCES["cifar100"] == CIFAR100.url
    assert dataset.folder == torchvision_sets._CIFAR100_FOLDER == CIFAR100.base_folder
    assert get_dataset("cifar10").checksums["batches.meta"] != checksums["meta"]  # the subclass has its own tables


def test_cifar100_truncated_tarball(tmp_path: Path, monkeypatch, fakes) -> None:
    fake = fakes.cifar100_mirror(tmp_path / "mirror")
    _use(monkeypatch, "cifar100", fake.checksums)
    archive = fake.root / "cifar-100-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("cifar100", tmp_path / "data", mirror=fake.root)
    message = str(caught.value)
    assert "cifar-100-python.tar.gz" in message and "in the mirror" in message
    assert fake.checksums["cifar-100-python.tar.gz"] in message and fakes.md5(archive) in message
    _nothing_left(fakes, tmp_path / "data")


def test_cifar100_corrupt_pickle_is_never_unpickled(tmp_path: Path, monkeypatch, fakes) -> None:
    """Each extracted pickle is md5-checked before anything is unpickled (as for CIFAR-10)."""
    fake = fakes.cifar100_mirror(tmp_path / "mirror")
    _use(monkeypatch, "cifar100", {**fake.checksums, "train": "0" * 32})
    unpickled: list[object] = []
    monkeypatch.setattr(torchvision_sets.pickle, "load", lambda *args, **kwargs: unpickled.append(args))
    with pytest.raises(ChecksumError, match=r"cifar-100-python/train.*expected md5 0{32}"):
        prepare_dataset("cifar100", tmp_path / "data", mirror=fake.root)
    data_dir = tmp_path / "data"
    assert unpickled == [] and not (data_dir / "raw" / "cifar-100-python").exists()
    assert not (data_dir / "prepared").exists() and not fakes.leftovers(data_dir)


def test_cifar100_without_network_or_mirror(tmp_path: Path, fakes, _offline) -> None:
    with pytest.raises(DatasetUnavailableError) as caught:
        prepare_dataset("cifar100", tmp_path / "data")
    message = str(caught.value)
    assert "dataset 'cifar100' is unavailable" in message and "no mirror is set" in message
    assert "cifar-100-python.tar.gz <- https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert "LIPBENCH_DATA_MIRROR=" in message
    assert _offline == ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"]
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------- EuroSAT


def _decoded(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "extracted-folder"])
def test_eurosat_from_mirror(tmp_path: Path, monkeypatch, fakes, _offline, as_zip: bool) -> None:
    fake = fakes.eurosat_mirror(tmp_path / "mirror", as_zip=as_zip)
    _use_eurosat(monkeypatch, fake)
    before = fakes.snapshot(fake.root)
    manifest = prepare_dataset("eurosat", tmp_path / "data", mirror=fake.root)
    assert fakes.snapshot(fake.root) == before and _offline == []
    assert ("md5 verified" in manifest["images"]["verified"]) == as_zip
    assert [r["file"] for r in manifest["inputs"]] == (["eurosat/EuroSAT.zip"] if as_zip else [])
    assert manifest["class_names"] == list(eurosat_module.CLASS_NAMES) == sorted(fake.expected["counts"])
    assert manifest["params"] == {"seed": 0, "test_fraction": 0.2}
    assert manifest["split"]["seed"] == 0 and "sha256" in manifest["split"]["rule"]
    assert manifest["files"]["split.txt"]["sha256"]
    counts = fake.expected["counts"]  # 3, 4, 5, 3, 4, ... images: one test image each at 0.2
    assert manifest["splits"]["test"]["class_counts"] == [1] * 10
    assert manifest["splits"]["train"]["class_counts"] == [counts[c] - 1 for c in eurosat_module.CLASS_NAMES]
    raw = tmp_path / "data" / "raw" / "eurosat" / "2750"
    splits = load_dataset("eurosat", tmp_path / "data")
    rows = [line.split() for line in (tmp_path / "data/prepared/eurosat/split.txt").read_text().splitlines()]
    for split, dataset in (("train", splits.train), ("test", splits.test)):
        x, y = take_tensors(dataset, None)
        paths = [path for name, path, _ in rows if name == split]
        assert x.shape == (len(paths), 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert y.tolist() == [eurosat_module.CLASS_NAMES.index(path.split("/")[0]) for path in paths]
        expected = torch.stack([_decoded(raw / path) for path in paths])
        assert torch.equal((x * 255).round().to(torch.uint8), expected)
    assert sorted(f"2750/{path}" for _, path, _ in rows) == fake.expected["files"]
    assert torch.load(tmp_path / "data/prepared/eurosat/test.pt")["x"].dtype == torch.uint8


def test_eurosat_matches_torchvision(tmp_path: Path, monkeypatch, fakes) -> None:
    from torchvision.datasets import EuroSAT

    fake = fakes.eurosat_mirror(tmp_path / "mirror")
    _use_eurosat(monkeypatch, fake)
    prepare_dataset("eurosat", tmp_path / "data", {"test_fraction": 0.5}, mirror=fake.root)
    oracle = EuroSAT(str(tmp_path / "data" / "raw"), download=False)
    assert oracle.classes == list(eurosat_module.CLASS_NAMES)
    rows = [line.split() for line in (tmp_path / "data/prepared/eurosat/split.txt").read_text().splitlines()]
    ours = {path: (split, int(label)) for split, path, label in rows}
    root = Path(oracle.root) / "eurosat" / "2750"
    assert len(ours) == len(oracle)
    splits = load_dataset("eurosat", tmp_path / "data", {"test_fraction": 0.5})
    position = {split: [path for name, path, _ in rows if name == split] for split in ("train", "test")}
    for index in range(len(oracle)):
        path, target = oracle.samples[index]
        relative = Path(path).relative_to(root).as_posix()
        split, label = ours[relative]
        assert label == target
        x, y = getattr(splits, split)[position[split].index(relative)]
        image = torch.from_numpy(np.array(oracle[index][0])).permute(2, 0, 1)
        assert int(y) == target and torch.equal((x * 255).round().to(torch.uint8), image)


def test_eurosat_split_is_deterministic_and_stratified(tmp_path: Path, monkeypatch, fakes) -> None:
    fake = fakes.eurosat_mirror(tmp_path / "mirror")
    _use_eurosat(monkeypatch, fake)
    prepared = {}
    for data_dir, params in (("a", {"seed": 7}), ("b", {"seed": 7}), ("c", {"seed": 8})):
        params = {**params, "test_fraction": 0.5}
        manifest = prepare_dataset("eurosat", tmp_path / data_dir, params, mirror=fake.root)
        prepared[data_dir] = ({name: record["sha256"] for name, record in manifest["files"].items()}, manifest)
    assert prepared["a"][0] == prepared["b"][0]  # same seed: byte-identical split and tensors
    assert prepared["a"][0]["split.txt"] != prepared["c"][0]["split.txt"]
    counts = fake.expected["counts"]
    half = [int(np.floor(counts[c] * 0.5 + 0.5)) for c in eurosat_module.CLASS_NAMES]  # 3 -> 2, 4 -> 2, 5 -> 3
    for _, manifest in prepared.values():
        assert manifest["splits"]["test"]["class_counts"] == half  # stratified: exact per class
    # reuse: another seed on an existing data folder re-splits the already extracted images
    again = prepare_dataset("eurosat", tmp_path / "a", {"seed": 8, "test_fraction": 0.5}, mirror=fake.root)
    assert "already present" in again["images"]["verified"] and again["files"] == prepared["c"][1]["files"]


def test_eurosat_split_rule_on_the_real_counts() -> None:
    files = {c: [f"{c}_{i}.jpg" for i in range(1, n + 1)] for c, n in eurosat_module.CLASS_COUNTS.items()}
    assert sum(map(len, files.values())) == 27_000
    split = eurosat_module.split_rule(files, seed=0, test_fraction=0.2)
    assert len(split["test"]) == 5_400 and len(split["train"]) == 21_600
    per_class = Counter(path.split("/")[0] for path in split["test"])
    assert per_class == {c: n // 5 for c, n in eurosat_module.CLASS_COUNTS.items()}  # exactly 20% of each class
    assert set(split["test"]).isdisjoint(split["train"])
    assert split == eurosat_module.split_rule({c: files[c][::-1] for c in reversed(files)}, 0, 0.2)  # order-free
    assert len({path.split("/")[0] for path in split["test"][:50]}) == 10  # the first test points mix every class
    other = eurosat_module.split_rule(files, seed=1, test_fraction=0.2)
    assert other["test"] != split["test"] and Counter(p.split("/")[0] for p in other["test"]) == per_class
    key = hashlib.sha256(b"0/" + split["test"][0].encode()).hexdigest()  # the documented rule
    assert key == min(hashlib.sha256(f"0/{path}".encode()).hexdigest() for path in split["test"] + split["train"])


@pytest.mark.parametrize(
    "params, message",
    [
        ({"test_fraction": 0.0}, "'test_fraction' of dataset 'eurosat' must be a number strictly between 0 and 1"),
        ({"test_fraction": 1}, "strictly between 0 and 1"),
        ({"test_fraction": 0.0001}, "gives 0 test images of the 3000 of class 'AnnualCrop'"),
        ({"test_fraction": 0.9999}, "gives 3000 test images of the 3000 of class 'AnnualCrop'"),
        ({"seed": -1}, "'seed' of dataset 'eurosat' must be an integer in"),
        ({"seed": True}, "'seed'"),
        ({"split": "official"}, "unknown parameter.*'split'.*seed.*test_fraction"),
    ],
)
def test_eurosat_params_are_validated_before_any_work(tmp_path: Path, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_dataset("eurosat", tmp_path / "data", params, mirror=tmp_path / "no-mirror")
    assert not (tmp_path / "data").exists()


def test_eurosat_truncated_zip(tmp_path: Path, monkeypatch, fakes) -> None:
    fake = fakes.eurosat_mirror(tmp_path / "mirror")
    _use_eurosat(monkeypatch, fake)
    archive = fake.root / "eurosat" / "EuroSAT.zip"
    archive.write_bytes(archive.read_bytes()[:1000])
    before = fakes.snapshot(fake.root)
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("eurosat", tmp_path / "data", mirror=fake.root)
    message = str(caught.value)
    assert "eurosat/EuroSAT.zip" in message and "in the mirror" in message
    assert fake.checksums["EuroSAT.zip"] in message and fakes.md5(archive) in message
    assert fakes.snapshot(fake.root) == before
    _nothing_left(fakes, tmp_path / "data")


def test_eurosat_zip_with_a_corrupt_image_leaves_nothing(tmp_path: Path, monkeypatch, fakes) -> None:
    """A zip whose md5 is (made) right but holds an undecodable JPEG: no extraction, no prepared data."""
    fake = fakes.eurosat_mirror(tmp_path / "mirror")
    archive = fake.root / "eurosat" / "EuroSAT.zip"
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr("2750/River/River_99.jpg", b"not a jpeg")
    counts = {**fake.expected["counts"], "River": fake.expected["counts"]["River"] + 1}
    _use(monkeypatch, "eurosat", {"EuroSAT.zip": fakes.md5(archive)})
    monkeypatch.setattr(get_dataset("eurosat"), "class_counts", counts)
    with pytest.raises(ValueError, match=r"eurosat: .*EuroSAT.zip: River/River_99.jpg is not a readable JPEG"):
        prepare_dataset("eurosat", tmp_path / "data", mirror=fake.root)
    data_dir = tmp_path / "data"
    assert fakes.files_under(data_dir) == [data_dir / "raw" / "eurosat" / "EuroSAT.zip"]  # the verified original
    assert not (data_dir / "prepared").exists() and not fakes.leftovers(data_dir)


def test_eurosat_incomplete_mirror_folder(tmp_path: Path, monkeypatch, fakes, _offline) -> None:
    fake = fakes.eurosat_mirror(tmp_path / "mirror", as_zip=False)
    _use_eurosat(monkeypatch, fake)
    (fake.root / "eurosat" / "2750" / "Forest" / "Forest_2.jpg").unlink()
    before = fakes.snapshot(fake.root)
    with pytest.raises(
        ValueError, match=r"eurosat: the mirror folder .*mirror/eurosat/2750 is incomplete.*image counts Forest 3 \(expected 4\)"
    ):
        prepare_dataset("eurosat", tmp_path / "data", mirror=fake.root)
    assert fakes.snapshot(fake.root) == before and _offline == []
    _nothing_left(fakes, tmp_path / "data")


def test_eurosat_unavailable(tmp_path: Path, fakes, _offline) -> None:
    with pytest.raises(DatasetUnavailableError) as caught:
        prepare_dataset("eurosat", tmp_path / "data")
    message = str(caught.value)
    assert "dataset 'eurosat' is unavailable" in message and "no mirror is set" in message
    assert f"eurosat/EuroSAT.zip <- {eurosat_module.URL}" in message and "LIPBENCH_DATA_MIRROR=" in message
    assert _offline == [eurosat_module.URL]
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    with pytest.raises(DatasetUnavailableError, match=r"the mirror .*empty-mirror has no eurosat/EuroSAT.zip"):
        prepare_dataset("eurosat", tmp_path / "data", mirror=empty)
    assert len(_offline) == 1  # a mirror is set: no network
    assert not (tmp_path / "data").exists()


def test_eurosat_production_constants_are_torchvisions() -> None:
    import inspect

    from torchvision.datasets import EuroSAT

    source = inspect.getsource(EuroSAT)
    assert f'"{eurosat_module.URL}"' in source and f'md5="{eurosat_module.MD5}"' in source
    assert '"eurosat"' in source and '"2750"' in source and eurosat_module.URL.endswith("/" + eurosat_module.ARCHIVE)
    dataset = get_dataset("eurosat")
    assert dataset.checksums == {"EuroSAT.zip": eurosat_module.MD5}
    assert dataset.resources[0].path == "eurosat/EuroSAT.zip"
    assert sum(eurosat_module.CLASS_COUNTS.values()) == 27_000
    assert list(eurosat_module.CLASS_NAMES) == sorted(eurosat_module.CLASS_NAMES)  # torchvision's class order


def test_eurosat_damaged_extraction_is_named_with_the_fix(tmp_path: Path, monkeypatch, fakes) -> None:
    fake = fakes.eurosat_mirror(tmp_path / "mirror")
    _use_eurosat(monkeypatch, fake)
    data_dir = tmp_path / "data"
    prepare_dataset("eurosat", data_dir, mirror=fake.root)
    prepared = fakes.snapshot(data_dir / "prepared")
    (data_dir / "raw" / "eurosat" / "2750" / "SeaLake" / "SeaLake_1.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(
        ValueError, match=r"extracted folder .*2750 \(delete it to extract EuroSAT.zip again\): SeaLake/SeaLake_1"
    ):
        prepare_dataset("eurosat", data_dir, {"seed": 1}, mirror=fake.root)
    assert fakes.snapshot(data_dir / "prepared") == prepared and not fakes.leftovers(data_dir)
    shutil.rmtree(data_dir / "raw" / "eurosat" / "2750")  # the fix the message names
    assert prepare_dataset("eurosat", data_dir, {"seed": 1}, mirror=fake.root)["params"]["seed"] == 1
