# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Two moons: vanilla KR vs hKR (paper Fig. 1 and 2)
#
# The level sets of the learned function *f* on the two-moons problem, with the test
# points, for a 1-Lipschitz network trained with the vanilla Kantorovich-Rubinstein
# loss (KR) and with the hinge-regularised loss (hKR). KR alone maximises the mean
# separation of the classes and may misclassify many points; the hinge term moves the
# boundary *f* = 0 between the classes. The histograms show *f* on each class.
#
# Read from the pipeline only: `certify.npz` (logits, grid of *f*) and the prepared test points.

# %%
import os
from pathlib import Path

import numpy as np

from lipbench.profiles import load_profile
from lipbench.report import plotting
from lipbench.report.inputs import load_test_inputs, read_inputs
from lipbench.report.labels import display_name
from lipbench.runs import RunKey

profile = load_profile(os.environ.get("LIPBENCH_PARAMS", "params.yaml"))
inputs = read_inputs(profile, check=False)  # the report stage checked them
figures = Path(os.environ.get("LIPBENCH_REPORT_OUT", profile.path_of("reports"))) / "figures"
plotting.apply_style()
seed = profile.seeds[0]
models = [m for m in ("kr", "hkr") if m in profile.models] if "moons" in profile.datasets else []
print(f"profile {profile.name}; two-moons models shown: {', '.join(models) or 'none'} (seed {seed})")
if not models:
    print("Skipped: this profile has no moons dataset or neither the kr nor the hkr model.")

# %%
panels, histograms = [], []
for model in models:
    key = RunKey("moons", model, seed)
    train, cert = inputs.train[key], inputs.certify_arrays(key)
    points, _, _ = load_test_inputs(profile, "moons", len(cert.labels))
    settings = ", ".join(f"{k}={v:g}" for k, v in train.method_params.items())
    title = f"{display_name(train)}" + (f" ({settings})" if settings else "")
    title += f"\ntest accuracy {train.test_accuracy:.3f}"
    panels.append(plotting.LevelSetPanel(title, cert.grid_x, cert.grid_y, cert.grid_values[..., 0], points, cert.labels))
    histograms.append((display_name(train), cert.logits[:, 0], cert.labels))
    f = cert.logits[:, 0]
    print(
        f"{model}: f on the test points in [{f.min():.3f}, {f.max():.3f}], "
        f"accuracy {np.mean(cert.predictions == cert.labels):.3f}, mean |f| {np.abs(f).mean():.3f}"
    )

# %%
if panels:
    plotting.show(plotting.save_figure(plotting.level_sets_figure(panels), figures, "moons_level_sets"))

# %%
if histograms:
    plotting.show(plotting.save_figure(plotting.histogram_figure(histograms), figures, "moons_histograms"))
