# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Adversarial examples and saliency maps (paper Fig. 5 and 6)
#
# **Adversarial examples.** For each model and test input, the closest verified adversarial
# example any attack found (the minimal attacks' examples and the eps-ball attacks' examples
# at every eps), captioned with the attack and its ℓ₂ distance to the input. A hatched
# cell marks an input no attack broke ("not broken (all attacks)") or one the model already
# misclassifies ("misclassified"). The last row is the hKR transport counterfactual
# x − 2 *f*(x) ∇*f*(x) (binary: *f* is the logit; multiclass: the predicted
# class's logit and its gradient): for an hKR network ‖∇*f*‖ = 1 almost
# everywhere and this step follows the optimal transport plan to the other class, so
# the image changes semantically, whereas unconstrained networks are fooled by noise.
#
# **Saliency maps.** The input gradient of the predicted logit, divided by its largest
# absolute value per image (colour bar: red positive, blue negative; colour images per
# channel, grey), for hKR and the unconstrained models: hKR gradients are interpretable.
#
# Only image datasets get these figures; others are skipped below.

# %%
import os
from pathlib import Path

from lipbench.profiles import load_profile
from lipbench.report import images, plotting
from lipbench.report.inputs import read_inputs

profile = load_profile(os.environ.get("LIPBENCH_PARAMS", "params.yaml"))
inputs = read_inputs(profile, check=False)  # the report stage checked them
figures = Path(os.environ.get("LIPBENCH_REPORT_OUT", profile.path_of("reports"))) / "figures"
plotting.apply_style()
image_datasets = [d for d in profile.datasets if inputs.is_image_dataset(d)]
for dataset in profile.datasets:
    if dataset not in image_datasets:
        print(f"Skipped {dataset}: its inputs are not images, so it gets no image grids.")

# %%
for dataset in image_datasets:
    rows, bounds = images.adversarial_rows(inputs, dataset)
    fig = images.image_grid_figure(f"{dataset}: closest adversarial examples (all attacks) and the hKR transport", rows, bounds)
    plotting.show(plotting.save_figure(fig, figures, f"adversarial_{dataset}"))

# %%
for dataset in image_datasets:
    rows, bounds = images.saliency_rows(inputs, dataset)
    if len(rows) < 2:
        print(f"Skipped saliency maps of {dataset}: no hKR and no unconstrained model in the profile.")
        continue
    fig = images.image_grid_figure(f"{dataset}: input gradients of the predicted logit", rows, bounds)
    plotting.show(plotting.save_figure(fig, figures, f"saliency_{dataset}"))
