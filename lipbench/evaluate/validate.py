"""Everything a profile asks for, resolved before any stage runs (the pipeline's ``validate``
stage): every dataset is known with valid ``prepare`` parameters, every (dataset, model,
seed) run resolves (known method, valid method parameters and recipe) and every dataset's
evaluation settings are valid.

DVC itself stops on a model without parameters with "Parameters 'train.digits.hrk' are
missing", and only when it reaches that model's training; this stage runs first and says
what is wrong and how to fix it, e.g. "unknown method 'hrk'; known methods: ...".
"""

from __future__ import annotations

from lipbench.data import get_dataset
from lipbench.evaluate.settings import evaluation_settings
from lipbench.profiles import Profile
from lipbench.runs import RunKey, run_keys
from lipbench.train import config_from_profile

__all__ = ["validate_profile"]


def validate_profile(profile: Profile) -> list[RunKey]:
    """Resolve every run and every dataset's evaluation settings; the first problem raises
    (RegistryError, ProfileError or ValueError naming the file, key and fix)."""
    for dataset in profile.datasets:
        get_dataset(dataset).validate_params(profile.prepare_params(dataset))
    profile.device()
    profile.train_workers()
    keys = run_keys(profile)
    for key in keys:
        config_from_profile(profile, key)
    for dataset in profile.datasets:
        evaluation_settings(profile, dataset)
    return keys
