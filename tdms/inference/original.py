"""The original test loops, step by step, so that a released model's published outputs can be regenerated.

tdms's own loop (`--protocol tdms`, the default) pads frames by reflection to multiples of 4 and feeds O_{t-1}
back at full precision. The original scripts differ, and `--protocol original` (config key `test.protocol`)
repeats them:

- Lai et al. 2018, fast_blind_video_consistency `test_pretrained.py` (their TransformNet + ConvLSTM), and the
  TDMS-Net authors' `test_TDMS_Net.py` (ZhouYiiFeng/TDMS-Net) both
  1. resize the four inputs I_{t-1}, I_t, O_{t-1}, P_t to the next multiple of 4 with OpenCV's bilinear resize;
  2. run the network on them, as float32 RGB in [0, 1];
  3. resize O_t back to the frame size (bilinear), clip it to [0, 1], truncate it to uint8 (np.uint8(x * 255),
     not rounded) and write it as a JPEG (OpenCV's default quality, 95);
  4. read that JPEG back as O_{t-1} of the next frame (frame 0 is P_0 written and read back the same way).
- Lai et al.'s script feeds (P_t, O_{t-1}, I_t, O_{t-1}) to their network: O_{t-1} stands where their training
  code has I_{t-1}. Their published outputs were made that way, so it is repeated for `model.arch=lai`; the
  ConvLSTM state is carried from frame to frame. The TDMS-Net script feeds (I_{t-1}, I_t, O_{t-1}, P_t).

Each frame yielded is the decoded JPEG the original would have written (float32 k/255), so a PNG output holds
exactly the pixels the original's JPEG files decode to.
"""

import math

import cv2
import numpy as np
import torch

from tdms.frames.io import frames_to_tensor, tensor_to_frame

PROTOCOLS = ("tdms", "original")
JPEG_QUALITY = 95  # cv2.imwrite's default for .jpg, which both scripts use
MULTIPLE = 4  # the networks' input sides: two stride-2 convolutions


def written(frame: np.ndarray) -> np.ndarray:
    """What the original scripts' save_img + read_img make of a float RGB frame: clipped, truncated to uint8,
    JPEG-encoded at quality 95 and decoded, as float32 RGB in [0, 1]."""
    bgr = np.uint8(np.clip(frame[:, :, ::-1], 0, 1) * 255.0)  # float32 arithmetic, then truncation
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("cannot encode a frame as JPEG")
    return np.float32(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]) / 255.0


def to_multiple(frame: np.ndarray) -> np.ndarray:
    """cv2.resize (bilinear) to the next multiples of 4, as the scripts do (a frame of that size is unchanged)."""
    h, w = frame.shape[:2]
    return cv2.resize(frame, (math.ceil(w / MULTIPLE) * MULTIPLE, math.ceil(h / MULTIPLE) * MULTIPLE))


@torch.inference_mode()
def original_frames(model, pairs, device="cpu"):
    """The original scripts' recurrence over (I_t, P_t) float32 (H,W,3) frames: yields O_t as written and read back
    (see the module docstring). `model` is TDMS-Net or Lai et al.'s network, in eval mode."""
    lai = getattr(model, "recurrent", False)
    i_prev = o_prev = state = None
    for i_t, p_t in pairs:
        if o_prev is None:
            o_t = written(p_t)
        else:
            h, w = p_t.shape[:2]
            x = [frames_to_tensor(to_multiple(f)).to(device) for f in (i_prev, i_t, o_prev, p_t)]
            if lai:  # test_pretrained.py: cat(P_t, O_{t-1}, I_t, O_{t-1})
                out = model(x[2], x[1], x[2], x[3], state)
                state = out["state"]
            else:
                out = model(*x)
            o_t = written(cv2.resize(tensor_to_frame(out["output"].float()), (w, h)))
        yield o_t
        i_prev, o_prev = i_t, o_t
