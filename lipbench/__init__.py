"""lipbench: a reproducible benchmark for 1-Lipschitz classifiers (Serrurier et al., CVPR 2021)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lipbench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
