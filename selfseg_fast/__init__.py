"""selfseg-fast: self-guided open-vocabulary semantic segmentation (Self-Seg), fast and faithful."""

from selfseg_fast.config import PRESETS, SelfSegConfig
from selfseg_fast.errors import SelfSegError

__all__ = ["PRESETS", "SelfSegConfig", "SelfSegError", "__version__"]
__version__ = "0.1.0"
