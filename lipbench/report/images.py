"""Image-grid figures of the report: adversarial examples next to the hKR transport
counterfactual (paper Fig. 5) and input-gradient saliency maps, for image datasets.

Inputs come from the pipeline only: the attack stage's verified adversarial examples (of
every attack), the certify stage's logits and input gradients, and the prepared test inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from lipbench.arrays import AttackArrays
from lipbench.report.inputs import ReportInputs, load_test_inputs
from lipbench.report.labels import attack_label, display_name
from lipbench.runs import RunKey

__all__ = [
    "ImageRow",
    "Adversarial",
    "hkr_model",
    "transport_counterfactual",
    "smallest_adversarial",
    "adversarial_rows",
    "saliency_rows",
    "image_grid_figure",
]

#: Captions of the cells with no adversarial example (drawn hatched, never blank).
NOT_BROKEN, MISCLASSIFIED = "not broken (all attacks)", "misclassified"
#: Label of the saliency figure's colour bar (each gradient is divided by its max |value|).
GRADIENT_LABEL = "input gradient / max |gradient|"


@dataclass
class ImageRow:
    """One row of an image grid: ``kind`` is ``input`` (pixel values) or ``gradient``.

    A ``None`` image is drawn as a hatched cell; its caption says why (e.g. not broken).
    """

    label: str
    images: list[np.ndarray | None]
    captions: list[str] = field(default_factory=list)
    kind: str = "input"


@dataclass(frozen=True)
class Adversarial:
    """A point's closest verified adversarial example across attacks (``attack`` None: none)."""

    image: np.ndarray | None
    attack: str | None
    distance: float
    caption: str


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


def _candidates(arrays: AttackArrays, slot: int, ndim: int) -> list[tuple[str, np.ndarray]]:
    """Every stored example of a slot: minimal attacks ``(k, ...)``, eps attacks ``(E, k, ...)``."""
    found = []
    for name in arrays.attacks:
        examples = arrays.examples.get(name)
        if examples is None:
            continue
        stack = examples[slot][None] if examples.ndim == ndim + 1 else examples[:, slot]
        found += [(name, image) for image in stack if np.isfinite(image).all()]  # NaN: none found
    return found


def smallest_adversarial(arrays: AttackArrays, slot: int, clean: np.ndarray) -> Adversarial:
    """The example of ``slot`` closest (L2) to ``clean`` over every attack and eps, captioned
    "<attack> <distance>"; "misclassified" or "not broken (all attacks)" when there is none.
    Ties go to the attack listed first."""
    if not arrays.clean_correct[int(arrays.example_indices[slot])]:
        return Adversarial(None, None, 0.0, MISCLASSIFIED)
    best: Adversarial | None = None
    for name, image in _candidates(arrays, slot, clean.ndim):
        distance = float(np.linalg.norm((image.astype(np.float64) - clean).ravel()))
        if best is None or distance < best.distance:
            best = Adversarial(image, name, distance, f"{attack_label(name)} {distance:.2f}")
    return best or Adversarial(None, None, float("inf"), NOT_BROKEN)


def _transport_row(inputs: ReportInputs, dataset: str, model: str, x: np.ndarray, chosen: list[int]) -> ImageRow:
    cert = inputs.certify_arrays(RunKey(dataset, model, inputs.profile.seeds[0]))
    images: list[np.ndarray | None] = []
    captions = []
    for index in chosen:
        if index >= len(cert.gradients):
            images.append(None)
            captions.append("no gradient")
            continue
        moved, value = transport_counterfactual(x[index], cert.logits[index], cert.gradients[index])
        images.append(moved)
        captions.append(f"f={value:.2f}")
    return ImageRow(r"hKR: $x - 2f(x)\nabla f(x)$", images, captions)


def adversarial_rows(inputs: ReportInputs, dataset: str, columns: int = 8) -> tuple[list[ImageRow], tuple[float, float]]:
    """Clean inputs, each model's closest verified adversarial example over all attacks
    (:func:`smallest_adversarial`) and the hKR transport counterfactual."""
    seed = inputs.profile.seeds[0]
    attacks = {m: inputs.attack_arrays(RunKey(dataset, m, seed)) for m in inputs.profile.models}
    indices = next(iter(attacks.values())).example_indices
    slots = _columns([a.clean_correct for a in attacks.values()], indices, columns)
    chosen = [int(indices[slot]) for slot in slots]
    x, y, info = load_test_inputs(inputs.profile, dataset, max(chosen) + 1)
    rows = [ImageRow("clean input", [x[i] for i in chosen], [f"label {y[i]}" for i in chosen])]
    for model, arrays in attacks.items():
        found = [smallest_adversarial(arrays, slot, x[index].astype(np.float64)) for slot, index in zip(slots, chosen)]
        label = display_name(inputs.train[RunKey(dataset, model, seed)])
        rows.append(ImageRow(label, [f.image for f in found], [f.caption for f in found]))
    hkr = hkr_model(inputs, dataset)
    if hkr is not None:
        rows.append(_transport_row(inputs, dataset, hkr, x, chosen))
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


def _cell(ax, image: np.ndarray | None, kind: str, bounds: tuple[float, float]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if image is None:  # marked, never blank: the caption says why there is no image
        ax.set_facecolor("#4d4d4d")
        ax.add_patch(plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="///", edgecolor="#bbbbbb", lw=0))
    else:
        pixels, style = _gradient(image) if kind == "gradient" else _pixels(image, bounds)
        ax.imshow(pixels, interpolation="nearest", **style)


def _gradient_colorbar(fig: Figure, axes: np.ndarray, rows: Sequence[ImageRow]) -> None:
    """A diverging, symmetric colour bar beside the gradient rows (grey for colour images, per channel)."""
    grad = [r for r, row in enumerate(rows) if row.kind == "gradient"]
    if not grad:
        return
    colour = any(image is not None and image.shape[0] != 1 for r in grad for image in rows[r].images)
    fig.subplots_adjust(right=0.88)
    top, bottom = axes[grad[0], -1].get_position().y1, axes[grad[-1], -1].get_position().y0
    cax = fig.add_axes((0.9, bottom, 0.015, top - bottom), label="<colorbar>")
    mappable = ScalarMappable(Normalize(-1.0, 1.0), cmap="gray" if colour else "RdBu_r")
    bar = fig.colorbar(mappable, cax=cax)
    bar.set_label(GRADIENT_LABEL + (" (each channel)" if colour else ""), fontsize=7)
    bar.ax.tick_params(labelsize=6)


def image_grid_figure(title: str, rows: Sequence[ImageRow], bounds: tuple[float, float]) -> Figure:
    """Rows of images with a label per row and a caption per image (hatched cell: no image,
    see its caption); gradient rows get a colour bar."""
    cols = max(len(row.images) for row in rows)
    extra = 0.9 if any(row.kind == "gradient" for row in rows) else 0.0
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.25 * cols + 1.9 + extra, 1.45 * len(rows) + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(cols):
            _cell(axes[r, c], row.images[c] if c < len(row.images) else None, row.kind, bounds)
            if c < len(row.captions):
                axes[r, c].set_xlabel(row.captions[c], fontsize=7, labelpad=2)
        axes[r, 0].set_ylabel(row.label, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(h_pad=0.4, w_pad=0.2)
    _gradient_colorbar(fig, axes, rows)
    return fig
