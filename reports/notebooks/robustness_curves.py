# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Accuracy vs ℓ₂ perturbation (paper Fig. 3 and 4, Table 1)
#
# For each dataset and model: certified accuracy (a continuous curve from the
# certified radii), DeepFool accuracy (continuous, from the minimal adversarial norms),
# robust accuracy under FGM, PGD, C&W and AutoAttack at the profile's budgets, and under
# all attacks combined (a point is robust only if no attack broke it). Certified
# accuracy is a guarantee and must lie below every attack curve.
#
# Read from the pipeline only: `metrics/attack/<dataset>.json`, `certify.npz`, `attack.npz`.

# %%
import os
from pathlib import Path

from IPython.display import HTML, display

from lipbench.profiles import load_profile
from lipbench.report import plotting, tables
from lipbench.report.index import table_html
from lipbench.report.inputs import read_inputs

profile = load_profile(os.environ.get("LIPBENCH_PARAMS", "params.yaml"))
inputs = read_inputs(profile, check=False)  # the report stage checked them
figures = Path(os.environ.get("LIPBENCH_REPORT_OUT", profile.path_of("reports"))) / "figures"
plotting.apply_style()
colors = plotting.palette(profile.models)
print(f"profile {profile.name}: datasets {', '.join(profile.datasets)}; models {', '.join(profile.models)}")

# %%
for dataset in profile.datasets:
    curves = plotting.robustness_curves(inputs, dataset)
    fig = plotting.robustness_figure(f"{dataset}: accuracy vs L2 perturbation, per model", curves)
    plotting.show(plotting.save_figure(fig, figures, f"robustness_{dataset}"))
    fig = plotting.deepfool_figure(f"{dataset}: DeepFool and certified accuracy", curves, colors)
    plotting.show(plotting.save_figure(fig, figures, f"deepfool_{dataset}"))
    display(HTML(table_html(tables.robustness_table(inputs, dataset))))
