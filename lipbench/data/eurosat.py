"""EuroSAT RGB: 27,000 Sentinel-2 patches of 64x64 pixels in 10 land-use classes.

Raw layout is torchvision's ``EuroSAT`` root: ``eurosat/EuroSAT.zip`` (URL and md5 from
``torchvision.datasets.EuroSAT.download``, torchvision 0.29) and its extraction
``eurosat/2750/<ClassName>/<ClassName>_<n>.jpg``. A mirror may hold the zip (md5-checked) or,
instead, the extracted ``eurosat/2750/`` folder (copied; no checksum is published for it,
which the manifest records; its class folders and per-class image counts are checked).
Class order is torchvision's: the sorted folder names. Prepare decodes every JPEG (PIL) into
uint8 tensors (3, 64, 64) saved as ``prepared/eurosat/{train,test}.pt``.

EuroSAT has no official train/test split. Ours, deterministic and stratified (params ``seed``
and ``test_fraction``): each image gets the key sha256("<seed>/<ClassName>/<file name>");
in each class the ``round(count * test_fraction)`` images with the smallest keys are test,
the others train; each split is ordered by key (classes interleaved, so the first test
points used by the attack stage cover every class). The rule depends on no random number
generator or library version; ``split.txt`` in the prepared folder lists every image's split.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lipbench.data.archives import RemoteDataset, Resource, copy_tree_staged, extract_staged
from lipbench.data.base import DatasetInfo, Param, fraction_param, register_dataset, save_tensors

__all__ = ["EuroSATDataset", "split_rule", "CLASS_NAMES", "CLASS_COUNTS"]

BASE_FOLDER = "eurosat"  # torchvision.datasets.EuroSAT: root/eurosat
IMAGES = "2750"  # the zip's top folder, torchvision's data folder eurosat/2750
ARCHIVE = "EuroSAT.zip"
URL = "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip"
MD5 = "c8fa014336c82ac7804f0398fcb19387"
IMAGE_SIZE = 64
#: Published per-class image counts (Helber et al. 2019; torchgeo's EuroSAT.class_counts), in
#: torchvision's class order (sorted folder names).
CLASS_COUNTS: dict[str, int] = {
    "AnnualCrop": 3000,
    "Forest": 3000,
    "HerbaceousVegetation": 3000,
    "Highway": 2500,
    "Industrial": 2500,
    "Pasture": 2000,
    "PermanentCrop": 2500,
    "Residential": 3000,
    "River": 2500,
    "SeaLake": 3000,
}
CLASS_NAMES: tuple[str, ...] = tuple(sorted(CLASS_COUNTS))
_SEED = Param(0, (int,), lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")


def split_key(seed: int, relative: str) -> str:
    """The sort key of image ``<ClassName>/<file>`` under ``seed``."""
    return hashlib.sha256(f"{seed}/{relative}".encode()).hexdigest()


def n_test_images(count: int, test_fraction: float) -> int:
    """How many of a class's ``count`` images are test: ``count * test_fraction`` rounded half up."""
    return math.floor(count * test_fraction + 0.5)


def split_rule(files: Mapping[str, list[str]], seed: int, test_fraction: float) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}`` of ``<ClassName>/<file>`` paths, each ordered by key."""
    result: dict[str, list[str]] = {"train": [], "test": []}
    for class_name, names in files.items():
        ranked = sorted(f"{class_name}/{name}" for name in names)
        ranked.sort(key=lambda relative: split_key(seed, relative))
        n_test = n_test_images(len(ranked), test_fraction)
        result["test"] += ranked[:n_test]
        result["train"] += ranked[n_test:]
    for split in result.values():
        split.sort(key=lambda relative: split_key(seed, relative))
    return result


def _decode(path: Path, shown: str) -> np.ndarray:
    """One EuroSAT JPEG as uint8 (3, 64, 64); ValueError naming it (as ``shown``) otherwise."""
    try:
        with Image.open(path) as image:
            image.load()
            size, mode = image.size, image.mode
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"eurosat: {shown} is not a readable JPEG ({error}); replace it with the original") from error
    if size != (IMAGE_SIZE, IMAGE_SIZE) or mode != "RGB":
        raise ValueError(f"eurosat: {shown} is a {size[0]}x{size[1]} {mode} image, not a 64x64 RGB EuroSAT patch")
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


@register_dataset("eurosat")
class EuroSATDataset(RemoteDataset):
    """EuroSAT RGB, our seeded stratified split (see the module docstring).

    Params: ``seed`` (0) and ``test_fraction`` (0.2, EuroSAT's usual 80/20) of the split.
    ``checksums`` (the zip's md5) and ``class_counts`` (the published counts every extracted
    folder must match) are replaced by tests to prepare small generated files.
    """

    info = DatasetInfo(
        "eurosat",
        num_classes=len(CLASS_NAMES),
        input_shape=(3, IMAGE_SIZE, IMAGE_SIZE),
        source="https://github.com/phelber/eurosat",
        needs_download=True,
    )
    resources = (Resource(f"{BASE_FOLDER}/{ARCHIVE}", (URL,)),)
    checksums: Mapping[str, str] = {ARCHIVE: MD5}
    class_counts: Mapping[str, int] = CLASS_COUNTS
    param_specs = {"seed": _SEED, "test_fraction": fraction_param(0.2)}

    def validate_params(self, params: Any) -> dict[str, Any]:
        """Defaults filled in; each class needs at least one train and one test image."""
        result = super().validate_params(params)
        for class_name, count in self.class_counts.items():
            n_test = n_test_images(count, result["test_fraction"])
            if not 1 <= n_test <= count - 1:
                raise ValueError(
                    f"parameter 'test_fraction' of dataset 'eurosat' must leave each class at least one train and one "
                    f"test image: {result['test_fraction']} gives {n_test} test images of the {count} of class "
                    f"{class_name!r}; choose a value closer to 0.5"
                )
        return result

    def list_images(self, folder: Path, origin: str) -> dict[str, list[str]]:
        """Class name -> sorted JPEG names; ValueError (naming ``origin``) unless ``folder`` is all of EuroSAT."""
        found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        expected = list(CLASS_NAMES)
        if found != expected:
            raise ValueError(
                f"eurosat: {origin} holds the class folders {found}, expected {expected} "
                f"(torchvision's layout {BASE_FOLDER}/{IMAGES}/<ClassName>/*.jpg); "
                f"replace it with the original {ARCHIVE} or its complete extraction"
            )
        files = {name: sorted(p.name for p in (folder / name).iterdir() if p.suffix == ".jpg") for name in expected}
        wrong = {name: len(names) for name, names in files.items() if len(names) != self.class_counts[name]}
        if wrong:
            counts = ", ".join(f"{name} {count} (expected {self.class_counts[name]})" for name, count in wrong.items())
            raise ValueError(
                f"eurosat: {origin} is incomplete or not the published dataset: image counts {counts}; "
                f"replace it with the original {ARCHIVE} or its complete extraction"
            )
        return files

    def _read(self, folder: Path, origin: str, decoded: dict[str, Any]) -> None:
        """Check ``folder`` and decode every image: ``decoded`` gets ``files`` and ``pixels`` (path -> uint8)."""
        files = self.list_images(folder, origin)
        pixels = {f"{c}/{n}": _decode(folder / c / n, f"{origin}: {c}/{n}") for c, names in files.items() for n in names}
        decoded.update(files=files, pixels=pixels)

    def _prepare(
        self, data_dir: Path, stage: Path, params: dict[str, Any], mirror: str | os.PathLike[str] | None
    ) -> dict[str, Any]:
        mirror_path = self.resolve_mirror(data_dir, mirror)
        root = data_dir / "raw" / BASE_FOLDER
        images = root / IMAGES
        archive = self.resources[0]
        decoded: dict[str, Any] = {}
        inputs: list[dict[str, Any]] = []
        record: dict[str, Any] = {"folder": f"raw/{BASE_FOLDER}/{IMAGES}"}
        mirror_images = None if mirror_path is None else mirror_path / BASE_FOLDER / IMAGES
        if images.is_dir():
            self._read(images, f"the extracted folder {images} (delete it to extract {ARCHIVE} again)", decoded)
            record["verified"] = "folder already present; class folders and counts checked, not checksummed"
        elif mirror_images is not None and not (mirror_path / archive.path).is_file() and mirror_images.is_dir():
            copy_tree_staged(
                mirror_images, images, lambda folder: self._read(folder, f"the mirror folder {mirror_images}", decoded)
            )
            record["verified"] = (
                "copied from the mirror; no checksum exists for an extracted folder (class folders, counts checked)"
            )
        else:
            inputs.append(self.fetch(archive, data_dir, mirror_path))
            extract_staged(root / ARCHIVE, IMAGES, root, lambda folder: self._read(folder, f"{root / ARCHIVE}", decoded))
            record["verified"] = f"extracted from {ARCHIVE} (md5 verified)"
        split = split_rule(decoded["files"], params["seed"], params["test_fraction"])
        labels = {name: index for index, name in enumerate(CLASS_NAMES)}
        splits, lines = {}, []
        for name in ("train", "test"):  # validate_params leaves both splits non-empty
            paths = split[name]
            x = torch.from_numpy(np.stack([decoded["pixels"][path] for path in paths]))
            y = torch.as_tensor([labels[path.split("/")[0]] for path in paths], dtype=torch.int64)
            splits[name] = save_tensors(stage / f"{name}.pt", x, y)
            lines += [f"{name} {path} {label}\n" for path, label in zip(paths, y.tolist())]
        with open(stage / "split.txt", "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        details = {"inputs": inputs, "images": record, "class_names": list(CLASS_NAMES), "split": self._split_record(params)}
        return {**details, "splits": splits}

    @staticmethod
    def _split_record(params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "rule": "per class, the round(count * test_fraction) images with the smallest "
            "sha256('<seed>/<ClassName>/<file>') are test, the others train; each split ordered by that key",
            "seed": params["seed"],
            "test_fraction": params["test_fraction"],
            "file": "split.txt",
        }
