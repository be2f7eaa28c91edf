"""fvds: datasets of neural-network feature visualizations across training stages."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fvds")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from fvds.errors import BadInput, FvdsError

__all__ = ["BadInput", "FvdsError", "__version__"]
