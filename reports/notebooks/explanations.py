# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Explanations of 1-Lipschitz networks (Serrurier et al., NeurIPS 2023)
#
# The explain stage's figures of merit per model: how well the input gradient points towards
# the nearest adversarial example (cosine with DeepFool's minimal adversarial direction), how
# faithful it is (µ-fidelity), how stable (max-sensitivity), and how far the counterfactual
# x − t·f(x)·∇f(x) lands compared with the certified radius (never below 1 for a sound
# certificate). The paper's claim: an OT-trained (hKR) network's gradient is more faithful and
# more aligned with the adversarial direction than an unconstrained or adversarially trained one.
#
# Read from the pipeline only: `metrics/explain/<dataset>.json`.

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

# %%
for dataset in profile.datasets:
    fig = plotting.explain_figure(inputs, dataset, colors)
    plotting.show(plotting.save_figure(fig, figures, f"explain_{dataset}"))
    display(HTML(table_html(tables.explain_table(inputs, dataset))))
