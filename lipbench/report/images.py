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

from lipbench.report.inputs import ReportInputs, load_test_inputs
from lipbench.report.labels import display_name
from lipbench.runs import RunKey

__all__ = [
    "ImageRow",
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


def hkr_model(inputs: ReportInputs, dataset: str) -> str | None:
    """The profile's hKR model (``hkr`` itself, else the first variant trained with the hkr method)."""
    models = inputs.profile.models
    if "hkr" in models:
        return "hkr"
    seed = inputs.profile.seeds[0]
    return next((model for model in models if inputs.train[RunKey(dataset, model, seed)].method == "hkr"), None)


def transport_counterfactual(x: np.ndarray, logits: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, float]:
    """``x - 2 f(x) grad f(x)`` with f the logit (binary) or the predicted class's logit; returns (x', f(x))."""
    value = float(logits[0]) if logits.shape[-1] == 1 else float(logits[int(np.argmax(logits))])
    return x - 2.0 * value * gradient, value


def _columns(clean_correct: Sequence[np.ndarray], indices: np.ndarray, count: int) -> list[int]:
    """Example slots to show: those every model classifies correctly first, then the others."""
    ok = [slot for slot, index in enumerate(indices) if all(c[index] for c in clean_correct)]
    rest = [slot for slot in range(len(indices)) if slot not in ok]
    return (ok + rest)[:count]


def _minimal_example(arrays, slot: int) -> tuple[np.ndarray, str] | None:
    for name, short in _MINIMAL:
        examples = arrays.examples.get(name)
        if examples is not None and np.isfinite(examples[slot]).all():
            return examples[slot], short
    return None


def adversarial_rows(inputs: ReportInputs, dataset: str, columns: int = 8) -> tuple[list[ImageRow], tuple[float, float]]:
    """Clean inputs, each model's minimal adversarial example (C&W, else DeepFool) and the hKR counterfactual."""
    seed = inputs.profile.seeds[0]
    attacks = {m: inputs.attack_arrays(RunKey(dataset, m, seed)) for m in inputs.profile.models}
    indices = next(iter(attacks.values())).example_indices
    slots = _columns([a.clean_correct for a in attacks.values()], indices, columns)
    chosen = [int(indices[slot]) for slot in slots]
    x, y, info = load_test_inputs(inputs.profile, dataset, max(chosen) + 1)
    rows = [ImageRow("clean input", [x[i] for i in chosen], [f"label {y[i]}" for i in chosen])]
    for model, arrays in attacks.items():
        images, captions = [], []
        for slot, index in zip(slots, chosen):
            found = _minimal_example(arrays, slot)
            images.append(None if found is None else found[0])
            if found is not None:
                captions.append(f"{found[1]} {np.linalg.norm(found[0] - x[index]):.2f}")
            else:
                captions.append("none found" if arrays.clean_correct[index] else "misclassified")
        rows.append(ImageRow(display_name(inputs.train[RunKey(dataset, model, seed)]), images, captions))
    hkr = hkr_model(inputs, dataset)
    if hkr is not None:
        cert = inputs.certify_arrays(RunKey(dataset, hkr, seed))
        images, captions = [], []
        for index in chosen:
            if index >= len(cert.gradients):
                images.append(None)
                captions.append("no gradient")
                continue
            moved, value = transport_counterfactual(x[index], cert.logits[index], cert.gradients[index])
            images.append(moved)
            captions.append(f"f={value:.2f}")
        rows.append(ImageRow(r"hKR: $x - 2f(x)\nabla f(x)$", images, captions))
    return rows, info.bounds


def saliency_rows(inputs: ReportInputs, dataset: str, columns: int = 8) -> tuple[list[ImageRow], tuple[float, float]]:
    """Clean inputs and the input gradient of the predicted logit for hKR and the unconstrained models."""
    seed = inputs.profile.seeds[0]
    hkr = hkr_model(inputs, dataset)
    unconstrained = [m for m in inputs.profile.models if not inputs.train[RunKey(dataset, m, seed)].constrained]
    models = ([hkr] if hkr else []) + unconstrained
    certs = {m: inputs.certify_arrays(RunKey(dataset, m, seed)) for m in models}
    count = min([columns, *(len(c.gradients) for c in certs.values())])
    x, y, info = load_test_inputs(inputs.profile, dataset, count)
    rows = [ImageRow("clean input", list(x[:count]), [f"label {label}" for label in y[:count]])]
    for model, cert in certs.items():
        label = display_name(inputs.train[RunKey(dataset, model, seed)])
        captions = [f"pred {c}" for c in cert.predictions[:count]]
        rows.append(ImageRow(label, list(cert.gradients[:count]), captions, kind="gradient"))
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
