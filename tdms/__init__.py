"""tdms: TDMS-Net for blind video temporal consistency."""

from tdms.api import load_model, scores, stabilize, stabilize_iter, warping_error
from tdms.evaluation.metrics import relative_reduction

__version__ = "0.1.0"
__all__ = ["load_model", "relative_reduction", "scores", "stabilize", "stabilize_iter", "warping_error"]
