"""torch.hub entry point of tdms, for a local clone (no download):

    model = torch.hub.load("path/to/tdms", "tdms", source="local")                  # checkpoints/tdms_offline.pth
    model = torch.hub.load("path/to/tdms", "tdms", source="local", checkpoint="model_pf_epoch_65.pth", device="cuda")

Then `tdms.stabilize(original, processed, model=model)` (see docs/api.md).
"""

from tdms.api import load_model

dependencies = ["torch", "numpy", "cv2", "yaml", "tqdm"]  # module names torch.hub checks before loading


def tdms(checkpoint=None, device="cpu"):
    """TDMS-Net in eval mode: `checkpoint` a path, a name in checkpoints/, or None for the shipped weights."""
    return load_model(checkpoint, device)
