"""CelebA "Eyeglasses" (binary: label 1 = wears eyeglasses, 0 = not), images 3x128x128.

Raw layout is torchvision's CelebA root: ``celeba/img_align_celeba/*.jpg`` (from
``img_align_celeba.zip``) and the annotation files of ``torchvision.datasets.CelebA.file_list``
(``list_attr_celeba.txt``, ``identity_CelebA.txt``, ``list_bbox_celeba.txt``,
``list_landmarks_align_celeba.txt``, ``list_eval_partition.txt``), all md5-checked. A mirror
may hold the zip or, instead, the already extracted ``img_align_celeba/`` folder (copied; an
extracted folder has no published checksum, which the manifest records).

Preprocessing, OUR READING of the paper's "centred crops" (its appendix is not available to
us): centre crop of the 178x218 aligned image to a 178x178 square (rows 20..197), then a
bilinear (antialiased) resize to 128x128, pixels in [0, 1]. Images are decoded lazily
(PIL); the prepared folder only holds the split index files.

Split: the official ``list_eval_partition.txt``: partition 0 is train and 2 is test. The
validation partition 1 is dropped by default (param ``valid_partition="drop"``), keeping the
official test protocol and leaving validation images out of training; ``"train"`` adds it
to the training split.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lipbench.data.archives import RemoteDataset, Resource, copy_tree_staged, extract_staged
from lipbench.data.base import DatasetInfo, Param, register_dataset
from lipbench.data.errors import DatasetNotPreparedError
from lipbench.data.torchvision_sets import torchvision_dataset_class

__all__ = ["CelebAEyeglasses", "CelebAImages", "centre_crop_resize"]

_DRIVE_URL = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"
BASE_FOLDER = "celeba"  # torchvision.datasets.CelebA.base_folder
_ZIP = "img_align_celeba.zip"
_IMAGES = "img_align_celeba"
_ATTRIBUTE = "Eyeglasses"
_ATTR_FILE = "list_attr_celeba.txt"
_PARTITION_FILE = "list_eval_partition.txt"
IMAGE_SIZE = 128


def centre_crop_resize(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Crop the centred square of side min(width, height), then resize it to ``size``."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.BILINEAR)


class CelebAImages(Dataset):
    """Lazy map-style dataset: reads, crops and resizes one JPEG per item."""

    def __init__(self, image_dir: Path, filenames: Sequence[str], labels: Sequence[int], size: int = IMAGE_SIZE):
        if len(filenames) != len(labels):
            raise ValueError(f"{len(filenames)} filenames but {len(labels)} labels")
        self.image_dir = Path(image_dir)
        self.filenames = list(filenames)
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.size = size

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.image_dir / self.filenames[index]) as image:
            resized = centre_crop_resize(image.convert("RGB"), self.size)
        pixels = torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1)
        return pixels.to(torch.float32) / 255.0, self.labels[index]


def _rows(path: Path, skip: int) -> list[list[str]]:
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return [line.split() for line in lines[skip:] if line.strip()]


def read_partition(path: Path) -> dict[str, int]:
    """``list_eval_partition.txt``: ``<image> <0|1|2>`` per line, no header."""
    partition = {}
    for row in _rows(path, 0):
        if len(row) != 2 or row[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}: bad line {' '.join(row)!r} (expected '<image> <0|1|2>')")
        partition[row[0]] = int(row[1])
    return partition


def read_attribute(path: Path, attribute: str) -> dict[str, int]:
    """``list_attr_celeba.txt``: a count line, the 40 attribute names, then ``<image> +-1 ...``."""
    with open(path, encoding="utf-8") as handle:
        count_line, names_line = handle.readline(), handle.readline()
    names = names_line.split()
    if attribute not in names:
        raise ValueError(f"{path}: attribute {attribute!r} not in header {names}")
    column = names.index(attribute) + 1
    values = {}
    for row in _rows(path, 2):
        if len(row) != len(names) + 1 or row[column] not in ("1", "-1"):
            raise ValueError(f"{path}: bad line for image {row[0] if row else '?'!r}")
        values[row[0]] = 1 if row[column] == "1" else 0
    if not count_line.strip().isdigit() or int(count_line) != len(values):
        raise ValueError(f"{path}: first line announces {count_line.strip()!r} images, found {len(values)}")
    return values


@register_dataset("celeba_eyeglasses")
class CelebAEyeglasses(RemoteDataset):
    """CelebA Eyeglasses attribute, official partitions (see the module docstring)."""

    info = DatasetInfo(
        "celeba_eyeglasses",
        num_classes=2,
        input_shape=(3, IMAGE_SIZE, IMAGE_SIZE),
        source="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
        needs_download=True,
    )

    @cached_property
    def resources(self) -> tuple[Resource, ...]:
        return tuple(
            Resource(f"{BASE_FOLDER}/{name}", (_DRIVE_URL.format(file_id),))
            for file_id, _, name in torchvision_dataset_class("CelebA").file_list
        )

    @cached_property
    def checksums(self) -> dict[str, str]:
        return {name: md5 for _, md5, name in torchvision_dataset_class("CelebA").file_list}

    param_specs = {"valid_partition": Param("drop", (str,), lambda v: v in ("drop", "train"), "'drop' or 'train'")}

    def _prepare(
        self, data_dir: Path, stage: Path, params: dict[str, Any], mirror: str | os.PathLike[str] | None
    ) -> dict[str, Any]:
        mirror_path = self.resolve_mirror(data_dir, mirror)
        root = data_dir / "raw" / BASE_FOLDER
        archive = next(r for r in self.resources if r.filename == _ZIP)
        annotations = [r for r in self.resources if r is not archive]
        inputs = [self.fetch(resource, data_dir, mirror_path) for resource in annotations]
        labels = read_attribute(root / _ATTR_FILE, _ATTRIBUTE)
        partition = read_partition(root / _PARTITION_FILE)
        if set(labels) != set(partition):
            raise ValueError(f"{_ATTR_FILE} and {_PARTITION_FILE} list different images")
        train_parts = {0, 1} if params["valid_partition"] == "train" else {0}
        split_files = {
            "train": sorted(name for name, part in partition.items() if part in train_parts),
            "test": sorted(name for name, part in partition.items() if part == 2),
        }
        needed = split_files["train"] + split_files["test"]

        def check_images(folder: Path) -> None:
            missing = [name for name in needed if not (folder / name).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} of the {len(needed)} images listed in {_PARTITION_FILE} are missing from "
                    f"{folder}, e.g. {', '.join(missing[:5])}"
                )

        images = root / _IMAGES
        images_record: dict[str, Any] = {"folder": f"raw/{BASE_FOLDER}/{_IMAGES}"}
        mirror_images = None if mirror_path is None else mirror_path / BASE_FOLDER / _IMAGES
        if images.is_dir():
            check_images(images)
            images_record["verified"] = "folder already present; not checksummed"
        elif mirror_images is not None and not (mirror_path / archive.path).is_file() and mirror_images.is_dir():
            copy_tree_staged(mirror_images, images, check_images)
            images_record["verified"] = "extracted folder copied from the mirror; no checksum exists for it"
        else:
            inputs.append(self.fetch(archive, data_dir, mirror_path))
            extract_staged(root / _ZIP, _IMAGES, root, check_images)
            images_record["verified"] = f"extracted from {_ZIP} (md5 verified)"

        return {
            "inputs": inputs,
            "images": images_record,
            "attribute": _ATTRIBUTE,
            "preprocessing": "centre crop to min(width, height) square (178x178), bilinear resize to 128x128",
            "splits": {split: self._write_split(stage, split, names, labels) for split, names in split_files.items()},
        }

    def _write_split(self, stage: Path, split: str, names: list[str], labels: Mapping[str, int]) -> dict[str, Any]:
        """``<split>.txt`` (one ``name label`` line per image) and its manifest record."""
        with open(stage / f"{split}.txt", "w", encoding="utf-8") as handle:
            handle.writelines(f"{name} {labels[name]}\n" for name in names)
        return {
            "file": f"{split}.txt",
            "count": len(names),
            "x_shape": list(self.info.input_shape),
            "x_dtype": "float32",
            "class_counts": np.bincount([labels[name] for name in names], minlength=2).tolist(),
        }

    def _load(self, data_dir: Path, target: Path, manifest: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
        image_dir = data_dir / manifest["images"]["folder"]
        if not image_dir.is_dir():
            raise DatasetNotPreparedError(self.name, data_dir, f"the image folder {image_dir} is missing")
        result = []
        for split in ("train", "test"):
            rows = _rows(target / f"{split}.txt", 0)
            result.append(CelebAImages(image_dir, [r[0] for r in rows], [int(r[1]) for r in rows]))
        return result[0], result[1]
