"""Fixtures for lipbench.data tests: no network, no ambient mirror, and small fake datasets
written in the real on-disk formats (idx.gz, CIFAR-10 and CIFAR-100 python tarballs, CelebA
folder, EuroSAT zip of JPEGs)."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import urllib.error
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from lipbench.data import archives

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_MNIST_MIRROR = REPO_ROOT.parent / "shared" / "data"

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def files_under(root: Path) -> list[Path]:
    """Every file below ``root`` (empty when ``root`` does not exist)."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Relative path -> (size, mtime_ns, md5) of every file: detects any change."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, md5(p)) for p in files_under(root)}


def leftovers(root: Path) -> list[Path]:
    """Temporary or partial paths left anywhere below ``root``."""
    return [p for p in root.rglob("*") if p.name.endswith((".partial", ".tmp", ".old"))] if root.exists() else []


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Tests never touch the network, and an ambient mirror setting must not leak in."""
    calls: list[str] = []

    def no_network(url: str, destination: Path, timeout: float = 0) -> None:
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(archives, "download", no_network)
    monkeypatch.delenv("LIPBENCH_DATA_MIRROR", raising=False)
    return calls


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzip-compressed IDX file, MNIST's format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@dataclass
class Fake:
    """A generated mirror: its root, the md5 table to inject, and the expected content."""

    root: Path
    checksums: dict[str, str]
    expected: dict[str, object] = field(default_factory=dict)


def make_idx_mirror(root: Path, folder: str, n_train: int = 12, n_test: int = 7, seed: int = 0) -> Fake:
    rng = np.random.default_rng(seed)
    expected: dict[str, object] = {}
    checksums = {}
    for split, prefix, count in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = root / folder / "raw" / f"{prefix}-{kind}-ubyte.gz"
            write_idx_gz(path, array)
            checksums[path.name] = md5(path)
        expected[split] = (images, labels)
    return Fake(root, checksums, expected)


def _pickle_file(payload: dict) -> bytes:
    return pickle.dumps(payload, protocol=2)


def make_cifar_mirror(root: Path, per_batch: int = 3, n_test: int = 4, extracted: bool = False) -> Fake:
    """``cifar-10-python.tar.gz`` (or its extracted folder) with CIFAR-10's pickled batches."""
    rng = np.random.default_rng(1)
    files: dict[str, bytes] = {}
    expected: dict[str, object] = {}
    train_x, train_y = [], []
    for name, count in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count).tolist()
        filenames = [f"{name}_{i}.png" for i in range(count)]
        files[name] = _pickle_file({"batch_label": f"fake {name}", "labels": labels, "data": data, "filenames": filenames})
        if name == "test_batch":
            expected["test"] = (data, np.array(labels))
        else:
            train_x.append(data)
            train_y += labels
    expected["train"] = (np.concatenate(train_x), np.array(train_y))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    files["batches.meta"] = _pickle_file({"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072})
    checksums = {name: hashlib.md5(content).hexdigest() for name, content in files.items()}
    root.mkdir(parents=True, exist_ok=True)
    if extracted:
        folder = root / "cifar-10-batches-py"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content)
    else:
        archive = root / "cifar-10-python.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        checksums[archive.name] = md5(archive)
    return Fake(root, checksums, expected)


def celeba_image(index: int) -> np.ndarray:
    """178x218 RGB image: 20 red rows top and bottom (cropped away), a flat colour between."""
    image = np.zeros((218, 178, 3), dtype=np.uint8)
    image[:20] = image[-20:] = (255, 0, 0)
    image[20:-20] = (0, (37 * index) % 256, 255)
    return image


def make_celeba_mirror(root: Path, as_zip: bool = False) -> Fake:
    """A torchvision CelebA root with 8 small JPEGs and the five real-format annotation files."""
    from PIL import Image

    rng = np.random.default_rng(2)
    names = [f"{i:06d}.jpg" for i in range(1, 9)]
    partitions = [0, 0, 0, 0, 1, 1, 2, 2]
    eyeglasses = [1, 0, 0, 1, 1, 0, 1, 0]
    base = root / "celeba"
    base.mkdir(parents=True, exist_ok=True)
    column = CELEBA_ATTRIBUTES.index("Eyeglasses")
    attr_lines = [str(len(names)), " ".join(CELEBA_ATTRIBUTES) + " "]
    for name, glasses in zip(names, eyeglasses):
        values = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
        values[column] = 1 if glasses else -1
        attr_lines.append(name + " " + " ".join(f"{v:>2}" for v in values))
    texts = {
        "list_attr_celeba.txt": attr_lines,
        "list_eval_partition.txt": [f"{n} {p}" for n, p in zip(names, partitions)],
        "identity_CelebA.txt": [f"{n} {100 + i}" for i, n in enumerate(names)],
        "list_bbox_celeba.txt": [str(len(names)), "image_id x_1 y_1 width height"] + [f"{n}    95  71 226 313" for n in names],
        "list_landmarks_align_celeba.txt": [
            str(len(names)),
            "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y",
        ]
        + [f"{n} 69  109  106  113   77  142   73  152  108  154" for n in names],
    }
    checksums = {}
    for filename, lines in texts.items():
        (base / filename).write_text("\n".join(lines) + "\n", encoding="utf-8")
        checksums[filename] = md5(base / filename)
    images = {name: celeba_image(i) for i, name in enumerate(names)}
    if as_zip:
        with zipfile.ZipFile(base / "img_align_celeba.zip", "w") as archive:
            for name, pixels in images.items():
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
                archive.writestr(f"img_align_celeba/{name}", buffer.getvalue())
        checksums["img_align_celeba.zip"] = md5(base / "img_align_celeba.zip")
    else:
        (base / "img_align_celeba").mkdir()
        for name, pixels in images.items():
            Image.fromarray(pixels).save(base / "img_align_celeba" / name, format="JPEG", quality=95)
    expected = {"names": names, "partitions": partitions, "eyeglasses": eyeglasses, "images": images}
    return Fake(root, checksums, expected)


CIFAR100_FINE_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()


def make_cifar100_mirror(root: Path, n_train: int = 7, n_test: int = 5, extracted: bool = False) -> Fake:
    """``cifar-100-python.tar.gz`` (or its extracted folder): ``train``, ``test`` and ``meta``
    pickles with CIFAR-100's keys (``fine_labels``, ``coarse_labels``, ``fine_label_names``...)."""
    rng = np.random.default_rng(3)
    files: dict[str, bytes] = {}
    expected: dict[str, object] = {"class_names": CIFAR100_FINE_NAMES}
    for name, count in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=count)]
        fine[0] = 99  # the highest fine label occurs
        payload = {
            "filenames": [f"{name}_{i}.png" for i in range(count)],
            "batch_label": f"{name}ing batch 1 of 1" if name == "train" else "testing batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [label // 5 for label in fine],
            "data": data,
        }
        files[name] = _pickle_file(payload)
        expected[name] = (data, np.array(fine))
    coarse = [f"superclass_{i}" for i in range(20)]
    files["meta"] = _pickle_file({"fine_label_names": CIFAR100_FINE_NAMES, "coarse_label_names": coarse})
    files["file.txt~"] = b"an editor backup file of the real archive\n"
    checksums = {name: hashlib.md5(content).hexdigest() for name, content in files.items() if name != "file.txt~"}
    root.mkdir(parents=True, exist_ok=True)
    if extracted:
        folder = root / "cifar-100-python"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content)
    else:
        archive = root / "cifar-100-python.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(f"cifar-100-python/{name}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        checksums[archive.name] = md5(archive)
    return Fake(root, checksums, expected)


EUROSAT_CLASSES = (
    "AnnualCrop Forest HerbaceousVegetation Highway Industrial Pasture PermanentCrop Residential River SeaLake"
).split()


def eurosat_image(class_index: int, number: int) -> np.ndarray:
    """64x64 RGB patch: a class colour, a per-image green level and a horizontal ramp."""
    image = np.empty((64, 64, 3), dtype=np.uint8)
    image[..., 0] = 20 * class_index
    image[..., 1] = 30 * number + np.arange(64, dtype=np.uint8)[None, :]
    image[..., 2] = 255 - 20 * class_index
    return image


def make_eurosat_mirror(root: Path, as_zip: bool = True) -> Fake:
    """A torchvision EuroSAT root: ``eurosat/EuroSAT.zip`` holding ``2750/<Class>/<Class>_<n>.jpg``
    (3 to 5 JPEGs per class) or, with ``as_zip=False``, the extracted ``eurosat/2750/`` folder."""
    from PIL import Image

    counts = {name: 3 + index % 3 for index, name in enumerate(EUROSAT_CLASSES)}
    encoded: dict[str, bytes] = {}
    for index, name in enumerate(EUROSAT_CLASSES):
        for number in range(1, counts[name] + 1):
            buffer = io.BytesIO()
            Image.fromarray(eurosat_image(index, number)).save(buffer, format="JPEG", quality=95)
            encoded[f"2750/{name}/{name}_{number}.jpg"] = buffer.getvalue()
    base = root / "eurosat"
    base.mkdir(parents=True, exist_ok=True)
    checksums: dict[str, str] = {}
    if as_zip:
        with zipfile.ZipFile(base / "EuroSAT.zip", "w") as archive:
            archive.writestr("2750/", b"")
            for name in EUROSAT_CLASSES:
                archive.writestr(f"2750/{name}/", b"")
            for member, content in encoded.items():
                archive.writestr(member, content)
        checksums["EuroSAT.zip"] = md5(base / "EuroSAT.zip")
    else:
        for member, content in encoded.items():
            (base / member).parent.mkdir(parents=True, exist_ok=True)
            (base / member).write_bytes(content)
    return Fake(root, checksums, {"counts": counts, "files": sorted(encoded)})


@dataclass
class Fakes:
    """Factories handed to tests by the ``fakes`` fixture."""

    md5 = staticmethod(md5)
    files_under = staticmethod(files_under)
    snapshot = staticmethod(snapshot)
    leftovers = staticmethod(leftovers)
    idx_mirror = staticmethod(make_idx_mirror)
    cifar_mirror = staticmethod(make_cifar_mirror)
    celeba_mirror = staticmethod(make_celeba_mirror)
    cifar100_mirror = staticmethod(make_cifar100_mirror)
    eurosat_mirror = staticmethod(make_eurosat_mirror)
    write_idx_gz = staticmethod(write_idx_gz)
    shared_mnist_mirror = SHARED_MNIST_MIRROR


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()
