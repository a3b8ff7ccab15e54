"""--protocol original: the original test scripts' loop, checked against their documented steps done with files."""

import math

import cv2
import numpy as np
import pytest
import torch

from tdms.inference.original import original_frames, to_multiple, written
from tdms.nets.lai_net import LaiNet
from tdms.nets.tdms_net import TDMSNet
from tests.conftest import flicker, moving_frames


def script_loop(model, ins, ps, folder, lai: bool):
    """The scripts' steps as they describe them, with real JPEG files: read with cv2.imread (BGR -> RGB, /255),
    resize to the next multiple of 4 with cv2.resize, run the network, resize back, clip, np.uint8(x * 255),
    cv2.imwrite(.jpg) with OpenCV's defaults; O_{t-1} is read back from the file written."""

    def save(img, path):
        cv2.imwrite(str(path), np.uint8(np.clip(img[:, :, ::-1], 0, 1) * 255.0))

    def read(path):
        return np.float32(cv2.imread(str(path))[:, :, ::-1]) / 255.0

    h, w = ps[0].shape[:2]
    hs, ws = math.ceil(h / 4) * 4, math.ceil(w / 4) * 4

    def tensor(img):
        return torch.from_numpy(cv2.resize(img, (ws, hs)).transpose(2, 0, 1)[None].copy())

    save(ps[0], folder / "00000.jpg")
    state = None
    for t in range(1, len(ps)):
        i1, i2, o1, p2 = (tensor(f) for f in (ins[t - 1], ins[t], read(folder / f"{t - 1:05d}.jpg"), ps[t]))
        with torch.no_grad():
            if lai:  # test_pretrained.py's input: cat(P_t, O_{t-1}, I_t, O_{t-1})
                out = model(o1, i2, o1, p2, state)
                state = out["state"]
            else:
                out = model(i1, i2, o1, p2)
        o2 = cv2.resize(out["output"][0].numpy().transpose(1, 2, 0), (w, h))
        save(o2, folder / f"{t:05d}.jpg")
    return [read(folder / f"{t:05d}.jpg") for t in range(len(ps))]


@pytest.mark.parametrize("arch", ["tdms", "lai"])
def test_matches_the_scripts_steps_done_with_files(tmp_path, arch):
    torch.manual_seed(0)
    model = (TDMSNet(nf=8, original_quirks=True) if arch == "tdms" else LaiNet(nf=8, original_quirks=True)).eval()
    ins = moving_frames(n=5, h=30, w=38)  # neither side a multiple of 4
    ps = flicker(ins)
    want = script_loop(model, ins, ps, tmp_path, lai=arch == "lai")
    got = list(original_frames(model, zip(ins, ps, strict=True)))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32 and g.shape == (30, 38, 3)
        assert np.array_equal(g, w)  # the same bytes the original's JPEG files decode to


def test_inputs_are_resized_not_padded_and_o_is_fed_back_as_written():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, i_prev, i_t, o_prev, p_t):
            seen.append((i_prev.shape, o_prev.clone()))
            return {"output": p_t}

    ins = moving_frames(n=3, h=30, w=38)
    ps = flicker(ins)
    out = list(original_frames(Spy(), zip(ins, ps, strict=True)))
    assert [s[0] for s in seen] == [(1, 3, 32, 40)] * 2  # resized up to multiples of 4
    fed = seen[1][1][0].permute(1, 2, 0).numpy()
    assert np.array_equal(fed, to_multiple(out[1]))  # O_{t-1} as written and read back, then resized
    assert np.array_equal(out[0], written(ps[0])) and not np.array_equal(out[0], ps[0])


def test_written_truncates_and_goes_through_jpeg():
    flat = np.full((16, 16, 3), 0.5, np.float32)  # 127.5 -> 127, not 128
    assert np.all(written(flat) == np.float32(127) / 255)
    assert np.all(written(flat + 1.0) == 1.0) and np.all(written(flat - 1.0) == 0.0)  # clipped first
