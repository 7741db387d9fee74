"""Image-grid figures of the report: adversarial examples next to the hKR transport
counterfactual (paper Fig. 5) and input-gradient saliency maps, for image datasets.

Inputs come from the pipeline only: the attack stage's minimal adversarial examples,
the certify stage's logits and input gradients, and the prepared test inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from lipbench.profiles import Profile
from lipbench.report.inputs import ModelKey, display_name, load_arrays, load_test_inputs, read_train

__all__ = [
    "ImageRow",
    "is_image_dataset",
    "hkr_model",
    "transport_counterfactual",
    "adversarial_rows",
    "saliency_rows",
    "image_grid_figure",
]

_MINIMAL = (("cw_l2", "C&W"), ("deepfool_l2", "DeepFool"))


@dataclass
class ImageRow:
    """One row of an image grid: ``kind`` is ``input`` (pixel values) or ``gradient``."""

    label: str
    images: list[np.ndarray | None]
    captions: list[str] = field(default_factory=list)
    kind: str = "input"


def is_image_dataset(profile: Profile, dataset: str) -> bool:
    """True when the dataset's inputs are images (C, H, W), judged from the stored gradients."""
    gradients = load_arrays(profile, "certify", ModelKey(dataset, profile.models[0], profile.seeds[0]))["gradients"]
    return gradients.ndim == 4


def hkr_model(profile: Profile, dataset: str) -> str | None:
    """The profile's hKR model (``hkr`` itself, else the first variant trained with the hkr method)."""
    if "hkr" in profile.models:
        return "hkr"
    for model in profile.models:
        if read_train(profile, ModelKey(dataset, model, profile.seeds[0])).get("method") == "hkr":
            return model
    return None


def transport_counterfactual(x: np.ndarray, logits: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, float]:
    """``x - 2 f(x) grad f(x)`` with f the logit (binary) or the predicted class's logit; returns (x', f(x))."""
    value = float(logits[0]) if logits.shape[-1] == 1 else float(logits[int(np.argmax(logits))])
    return x - 2.0 * value * gradient, value


def _columns(clean_correct: Sequence[np.ndarray], indices: np.ndarray, count: int) -> list[int]:
    """Example slots to show: those every model classifies correctly first, then the others."""
    ok = [slot for slot, index in enumerate(indices) if all(c[index] for c in clean_correct)]
    rest = [slot for slot in range(len(indices)) if slot not in ok]
    return (ok + rest)[:count]


def adversarial_rows(profile: Profile, dataset: str, columns: int = 8) -> tuple[list[ImageRow], tuple[float, float]]:
    """Clean inputs, each model's minimal adversarial example (C&W, else DeepFool) and the hKR counterfactual."""
    seed = profile.seeds[0]
    attacks = {m: load_arrays(profile, "attack", ModelKey(dataset, m, seed)) for m in profile.models}
    indices = next(iter(attacks.values()))["example_indices"]
    slots = _columns([a["clean_correct"] for a in attacks.values()], indices, columns)
    chosen = [int(indices[slot]) for slot in slots]
    x, y, info = load_test_inputs(profile, dataset, max(chosen) + 1)
    rows = [ImageRow("clean input", [x[i] for i in chosen], [f"label {y[i]}" for i in chosen])]
    for model, arrays in attacks.items():
        images, captions = [], []
        for slot, index in zip(slots, chosen):
            found = None
            for name, short in _MINIMAL:
                key = f"examples_{name}"
                if key in arrays and np.isfinite(arrays[key][slot]).all():
                    found = (arrays[key][slot], short)
                    break
            images.append(None if found is None else found[0])
            if found is not None:
                captions.append(f"{found[1]} {np.linalg.norm(found[0] - x[index]):.2f}")
            else:
                captions.append("none found" if arrays["clean_correct"][index] else "misclassified")
        label = display_name(read_train(profile, ModelKey(dataset, model, seed)))
        rows.append(ImageRow(label, images, captions))
    hkr = hkr_model(profile, dataset)
    if hkr is not None:
        cert = load_arrays(profile, "certify", ModelKey(dataset, hkr, seed))
        images, captions = [], []
        for index in chosen:
            if index >= len(cert["gradients"]):
                images.append(None)
                captions.append("no gradient")
                continue
            moved, value = transport_counterfactual(x[index], cert["logits"][index], cert["gradients"][index])
            images.append(moved)
            captions.append(f"f={value:.2f}")
        rows.append(ImageRow(r"hKR: $x - 2f(x)\nabla f(x)$", images, captions))
    return rows, info.bounds


def saliency_rows(profile: Profile, dataset: str, columns: int = 8) -> tuple[list[ImageRow], tuple[float, float]]:
    """Clean inputs and the input gradient of the predicted logit for hKR and the unconstrained models."""
    seed = profile.seeds[0]
    hkr = hkr_model(profile, dataset)
    unconstrained = [m for m in profile.models if not read_train(profile, ModelKey(dataset, m, seed)).get("constrained", True)]
    models = ([hkr] if hkr else []) + unconstrained
    certs = {m: load_arrays(profile, "certify", ModelKey(dataset, m, seed)) for m in models}
    count = min([columns, *(len(c["gradients"]) for c in certs.values())])
    x, y, info = load_test_inputs(profile, dataset, count)
    rows = [ImageRow("clean input", list(x[:count]), [f"label {label}" for label in y[:count]])]
    for model, cert in certs.items():
        predicted = cert["logits"][:count]
        classes = (predicted[:, 0] > 0).astype(int) if predicted.shape[1] == 1 else predicted.argmax(axis=1)
        label = display_name(read_train(profile, ModelKey(dataset, model, seed)))
        rows.append(ImageRow(label, list(cert["gradients"][:count]), [f"pred {c}" for c in classes], kind="gradient"))
    return rows, info.bounds


def _pixels(image: np.ndarray, bounds: tuple[float, float]) -> tuple[np.ndarray, dict]:
    low, high = bounds
    scaled = np.clip((image - low) / (high - low), 0.0, 1.0)
    if scaled.shape[0] == 1:
        return scaled[0], {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    return np.transpose(scaled, (1, 2, 0)), {}


def _gradient(image: np.ndarray) -> tuple[np.ndarray, dict]:
    scale = float(np.max(np.abs(image))) or 1.0
    normalised = image / scale
    if normalised.shape[0] == 1:
        return normalised[0], {"cmap": "RdBu_r", "vmin": -1.0, "vmax": 1.0}
    return np.transpose(0.5 + 0.5 * normalised, (1, 2, 0)), {}


def image_grid_figure(title: str, rows: Sequence[ImageRow], bounds: tuple[float, float]) -> Figure:
    """Rows of images with a label per row and a caption per image (blank cell: none found)."""
    cols = max(len(row.images) for row in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.25 * cols + 1.9, 1.45 * len(rows) + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            image = row.images[c] if c < len(row.images) else None
            if image is None:
                ax.set_facecolor("#eeeeee")
            else:
                pixels, style = _gradient(image) if row.kind == "gradient" else _pixels(image, bounds)
                ax.imshow(pixels, interpolation="nearest", **style)
            if c < len(row.captions):
                ax.set_xlabel(row.captions[c], fontsize=7, labelpad=2)
        axes[r, 0].set_ylabel(row.label, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(h_pad=0.4, w_pad=0.2)
    return fig
