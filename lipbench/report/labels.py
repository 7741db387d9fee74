"""How methods and attacks are named in the report. A method's paper name is written in a
plain form, ``base[_sub][^sup]`` (``hKR_α^m``, ``1LIP_log``), and rendered per medium:

* figures and ``.tex`` tables: LaTeX / mathtext (:func:`latex_name`, ``$\\mathrm{hKR}_{\\alpha}^{m}$``);
* HTML pages (index, leaderboard, notebooks): sub- and superscripts (:func:`html_name`,
  ``hKR<sub>α</sub><sup>m</sup>``), never raw LaTeX (the pages load no MathJax, so they read
  the same offline);
* Markdown, CSV and JSON: the plain form as is (``hKR_α^m``), readable as text and stable for
  scripts.

Light module."""

from __future__ import annotations

import html
import re

from lipbench.summaries import TrainSummary

__all__ = ["ATTACK_LABELS", "attack_label", "latex_name", "html_name", "display_name"]

ATTACK_LABELS = {
    "fgm": "FGM",
    "pgd_l2": "PGD",
    "cw_l2": "C&W",
    "deepfool_l2": "DeepFool",
    "autoattack_l2": "AutoAttack",
}

_GREEK = {"α": r"\alpha", "β": r"\beta", "λ": r"\lambda", "γ": r"\gamma", "ε": r"\epsilon"}
_NAME = re.compile(r"^(?P<base>[^_^\s]+)(?:_(?P<sub>[^_^\s]+))?(?:\^(?P<sup>[^_^\s]+))?$")


def attack_label(name: str) -> str:
    return ATTACK_LABELS.get(name, name)


def _math_part(text: str) -> str:
    if text in _GREEK:
        return _GREEK[text]
    return text if len(text) == 1 else rf"\mathrm{{{text}}}"


def latex_name(paper_name: str) -> str:
    """``hKR_α^m`` -> ``$\\mathrm{hKR}_{\\alpha}^{m}$`` (LaTeX and matplotlib mathtext)."""
    match = _NAME.match(paper_name)
    if not match or not (match["sub"] or match["sup"]):
        return paper_name
    text = rf"\mathrm{{{match['base']}}}"
    if match["sub"]:
        text += f"_{{{_math_part(match['sub'])}}}"
    if match["sup"]:
        text += f"^{{{_math_part(match['sup'])}}}"
    return f"${text}$"


def html_name(paper_name: str) -> str:
    """``hKR_α^m`` -> ``hKR<sub>α</sub><sup>m</sup>`` (escaped HTML; other names escaped as they are)."""
    match = _NAME.match(paper_name)
    if not match or not (match["sub"] or match["sup"]):
        return html.escape(paper_name, quote=True)
    text = html.escape(match["base"], quote=True)
    if match["sub"]:
        text += f"<sub>{html.escape(match['sub'], quote=True)}</sub>"
    if match["sup"]:
        text += f"<sup>{html.escape(match['sup'], quote=True)}</sup>"
    return text


def display_name(train: TrainSummary) -> str:
    """A model's label in figures: the paper's name (mathtext), plus the variant when it differs."""
    name = latex_name(train.paper_name or train.model)
    return f"{name} ({train.model})" if train.model != train.method else name
