"""TDMS-Net: three heads (motion mask, soft flow, refining residual) over a two-stream encoder.

    O_t = M_t * warp(O_{t-1}, F_t) + (1 - M_t) * P_t + R_t

Parameter names follow the authors' released checkpoint so that `model_pf_epoch_65.pth` loads unchanged.

A deviation, off by default (`model.flow_prior`): with a flow prior F° = flow(I_t -> I_{t-1}) from a classical
estimator (DIS), the network sees I_{t-1} and O_{t-1} pre-aligned by F° and its flow head predicts a correction,
F_t = F° + ΔF_t. The weights and layer names stay those of the released model; only the routing of the two
previous frames changes. The shipped CPU-trained checkpoint uses it (checkpoints/README.md says why).

A second deviation, off by default (`model.residual_gate`): with "difference" the refining residual is bounded by
where the past and the present disagree, R_t = tanh(·) · G_t with G_t = maxpool3x3(max_c |warp(O_{t-1}, F_t) - P_t|).
The residual head sees the original frames, so without a bound it can draw their structure into O_t where P_t has
none (a black or flat P_t came back with I_t's edges); with it, O_t = P_t exactly wherever warp(O_{t-1}) = P_t
within one pixel, and O_t stays within G_t of the blend everywhere. It adds no weights.

A third deviation, off by default (`model.occlusion_gate`, needs the flow prior): with "forward-backward" the mask
is switched off where the prior fails Ruder et al.'s forward-backward test or points out of the frame,
M_t <- M_t · (1 - occ_t), occ_t from F° = flow(I_t -> I_{t-1}) and flow(I_{t-1} -> I_t) (one more DIS call a frame).
There warp(O_{t-1}) shows another surface (a disocclusion), a motion boundary or the clamped border (content entering
the view), so the past is wrong and O_t takes P_t; these are also pixels the warping error of Lai et al. leaves out
or never samples, so following P_t there costs no consistency as the field measures it.
With `model.occlusion_ramp` r > 0 the gate is 1 - the mean of occ_t over a (2r+1)² window (ramp): it falls across the
occlusion's border over 2r+1 pixels instead of at once, so the switch draws no edge of its own. It adds no weights.

"""


import torch
import torch.nn as nn
import torch.nn.functional as F

from tdms.errors import UserError
from tdms.flow.occlusion import leaves_frame, occlusion_mask
from tdms.flow.warp import warp
from tdms.nets.column_conv import ColumnConvLayer
from tdms.nets.layers import NORMS, ConvLayer, ResidualBlock, ResidualChain
from tdms.nets.upsampling import TransposedConv, UpsampleConvLayer

FLOW_SCALE = 20.0  # the flow head's output is multiplied by 20 (pixels)
GATES = ("none", "difference")
OCCLUSION_GATES = ("none", "forward-backward")


class TDMSNet(nn.Module):
    """TDMS-Net. Inputs are (B,3,H,W) in [0,1] with H, W multiples of 4.

    original_quirks=True reproduces the released model's forward exactly: the mask and flow heads'
    residual blocks each see E3 and only the last one's output is used, and the (IN) norm layers exist
    but are not applied. False (default) chains the blocks and applies `norm` as asked.
    """

    def __init__(self, nf: int = 32, norm: str = "none", original_quirks: bool = False, prior_flow=None,
                 residual_gate: str = "none", occlusion_gate: str = "none", occlusion_ramp: int = 0):
        super().__init__()
        if residual_gate not in GATES:
            raise UserError(f"unknown model.residual_gate {residual_gate!r}; choose from {list(GATES)}")
        if occlusion_gate not in OCCLUSION_GATES:
            raise UserError(f"unknown model.occlusion_gate {occlusion_gate!r}; choose from {list(OCCLUSION_GATES)}")
        if occlusion_gate != "none" and prior_flow is None:
            raise UserError("model.occlusion_gate needs a flow prior to test (model.flow_prior=dis-...)")
        if occlusion_ramp < 0:
            raise UserError(f"model.occlusion_ramp must be >= 0 pixels, got {occlusion_ramp}")
        self.residual_gate, self.occlusion_gate, self.occlusion_ramp = residual_gate, occlusion_gate, occlusion_ramp
        # flow(img_a, img_b) -> (B,2,H,W), tdms.flow's contract; None = the paper's network. Not a submodule:
        # it has no weights and is rebuilt from the config (checkpoint.build_model).
        self.prior_flow = prior_flow
        if norm not in NORMS:
            raise UserError(f"norm must be one of {NORMS}, got {norm!r}")
        self.original_quirks = original_quirks
        q = original_quirks

        def conv(cin, cout, k, stride=1):  # each followed by the leaky ReLU
            return ConvLayer(cin, cout, k, stride, norm, q, act=True)

        def blocks(n):
            return ResidualChain(*[ResidualBlock(nf * 4, norm, q) for _ in range(n)])

        def transposed(cin, cout):
            return TransposedConv(cin, cout, act=True)

        self.conv1a = conv(6, nf, 7)  # cat(I_{t-1}, I_t)
        self.conv1b = conv(6, nf, 7)  # cat(O_{t-1}, P_t)
        self.conv2a = conv(nf, nf * 2, 3, 2)
        self.conv2b = conv(nf, nf * 2, 3, 2)
        self.conv3 = conv(nf * 4, nf * 4, 3, 2)
        # prepacked on CPU, these give their outputs in a one-pixel frame padded as the next layer pads
        # (ConvLayer.frame): reflection for conv2a, conv2b and the residual blocks
        self.conv1b.frame = self.conv3.frame = 1
        self.conv1a.frame = 3  # E1a: read by conv2a (stride 2, its output then framed by 1) and deconv3 (7×7)
        self.ResBlocks = blocks(5)
        self.ResBlocks_w = blocks(2)
        self.ResBlocks_f = blocks(3)
        # refining residual head: upsample-conv with skips from the original-frame branch
        self.deconv1 = UpsampleConvLayer(nf * 4, nf * 2, 3, 1, norm, q, act=True)
        self.deconv2 = UpsampleConvLayer(nf * 4, nf, 3, 1, norm, q, act=True)
        # The three output layers have no norm (not even a dead one): the original builds them with norm=None.
        self.deconv3 = ColumnConvLayer(nf * 2, 3, 7)
        # mask head
        self.deconv1_w = transposed(nf * 4, nf * 2)
        self.deconv2_w = transposed(nf * 2, nf)
        self.deconv3_w = ColumnConvLayer(nf, 3, 7)
        # flow head
        self.deconv1_f = transposed(nf * 4, nf * 2)
        self.deconv2_f = transposed(nf * 2, nf)
        self.deconv3_f = ColumnConvLayer(nf, 2, 7)
        # and so for the heads' upsampling: replication for deconv1, zeros for the transposed convs
        self.ResBlocks.frame_mode = "replicate"
        self.ResBlocks_w.frame_mode = self.ResBlocks_f.frame_mode = "zeros"
        self.deconv1_w.frame = self.deconv1_f.frame = 1
        # and for the 7×7 output layers' reflection: a frame of 3 for every input they read
        self.deconv2.frame = self.deconv2_w.frame = self.deconv2_f.frame = 3
        self.deconv2_w.frame_mode = self.deconv2_f.frame_mode = "reflect"

    def _head_blocks(self, blocks: nn.Sequential, e3):
        if self.original_quirks:  # each block applied to E3, only the last output kept
            return blocks[-1](e3)
        return blocks(e3)

    @property
    def flow_prior(self) -> bool:
        return self.prior_flow is not None

    def occlusion(self, i_prev, i_t, prior) -> torch.Tensor:
        """occ_t (B,1,H,W) fp32 {0, 1}: 1 where F° = `prior` fails the forward-backward test against
        flow(I_{t-1} -> I_t) (Ruder et al., flow.occlusion.occlusion_mask); the gate adds where F° leaves the frame."""
        return occlusion_mask(prior, self.prior_flow(i_prev.float(), i_t.float()).float())

    def heads(self, i_prev, i_t, o_prev, p_t, prior=None, occlusion=None):
        """Mask (B,3,H,W) in [0,1), flow (B,2,H,W) pixels t→t-1, residual (B,3,H,W) in (-1,1).

        With a flow prior, `prior` is F° (B,2,H,W) fp32 (computed here when None; training passes the cached F*).
        The pre-alignment and F° + ΔF run in fp32 whatever the dtype of the other inputs. With the occlusion gate,
        `occlusion` is occ_t (B,1,H,W) in {0, 1} (computed here from F° when None; training passes the sample's).
        """
        h, w = i_t.shape[-2:]
        if h % 4 or w % 4:
            raise UserError(f"TDMSNet needs H and W divisible by 4, got {h}×{w} (pad the frames)")
        if occlusion is not None and self.occlusion_gate == "none":
            raise UserError("an occlusion was given to a TDMSNet built without the gate (model.occlusion_gate=none)")
        if self.flow_prior:
            if prior is None:
                prior = self.prior_flow(i_t.float(), i_prev.float())
            prior = prior.float()
            if self.occlusion_gate != "none" and occlusion is None:
                occlusion = self.occlusion(i_prev, i_t, prior)
            i_prev, o_prev = (warp(x.float(), prior).to(x.dtype) for x in (i_prev, o_prev))
        elif prior is not None:
            raise UserError("a flow prior was given to a TDMSNet built without one (model.flow_prior=none)")
        # every layer ends in the leaky ReLU but the output layers; several inputs: their channel concatenation
        e1a = self.conv1a(i_prev, i_t)
        e1b = self.conv1b(o_prev, p_t)
        e2a = self.conv2a(e1a)
        e2b = self.conv2b(e1b)
        e3 = self.conv3(e2a, e2b)

        r = self.ResBlocks(e3)
        r = self.deconv1(r)
        r = self.deconv2(r, e2a)
        residual = torch.tanh(self.deconv3(r, e1a))

        m = self._head_blocks(self.ResBlocks_w, e3)
        m = self.deconv2_w(self.deconv1_w(m))
        mask = torch.sigmoid(self.deconv3_w(m))
        if occlusion is not None:
            mask = mask * occlusion_gate(occlusion, prior, self.occlusion_ramp).to(mask.dtype)

        f = self._head_blocks(self.ResBlocks_f, e3)
        f = self.deconv2_f(self.deconv1_f(f))
        flow = self.deconv3_f(f) * FLOW_SCALE
        if self.flow_prior:
            flow = prior + flow.float()
        return mask, flow, residual

    def forward(self, i_prev, i_t, o_prev, p_t, prior=None, occlusion=None) -> dict:
        """One step of the recurrence. Returns output, mask, flow, residual, warped (= warp(O_{t-1}, F_t))."""
        mask, flow, residual = self.heads(i_prev, i_t, o_prev, p_t, prior, occlusion)
        output, warped = compose(mask, flow, residual, o_prev, p_t, self.residual_gate)
        return {"output": output, "mask": mask, "flow": flow, "residual": residual, "warped": warped}


def occlusion_gate(occlusion: torch.Tensor, prior: torch.Tensor, r: int) -> torch.Tensor:
    """The gate's factor on the mask (B,1,H,W) fp32: 1 - ramp(occ_t ∪ where F° = `prior` leaves the frame, r), so the
    past is switched off where F° fails the forward-backward test or has only the clamped border to sample."""
    return 1 - ramp(torch.maximum(occlusion.float(), leaves_frame(prior.float())), r)


def ramp(occlusion: torch.Tensor, r: int) -> torch.Tensor:
    """occ (B,1,H,W) in {0, 1} softened: its mean over the (2r+1)² window around each pixel (r = 0: occ itself).
    A hard switch is an edge of m·|warp(O_{t-1}) - P_t| in O_t along the occlusion's border; softened, the gate
    falls over 2r+1 pixels across the border (inside and out), and a thin line of occlusion is only dimmed."""
    if r == 0:
        return occlusion
    return F.avg_pool2d(F.pad(occlusion, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)


def compose(mask, flow, residual, o_prev, p_t, gate: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """O_t = M·warp(O_{t-1}, F) + (1-M)·P_t + R from the three heads' outputs; returns O_t and warp(O_{t-1}, F).
    gate "difference" bounds R by G = maxpool3x3(max_c |warp(O_{t-1}, F) - P_t|) (the class docstring says why).

    Runs in the inputs' dtype: the fast path (inference/fast.py) gives it fp32 heads so that O stays fp32.
    """
    warped = warp(o_prev, flow)
    if gate == "difference":
        bound = (warped - p_t).abs().amax(1, keepdim=True)
        residual = residual * F.max_pool2d(bound, 3, stride=1, padding=1)
    return mask * warped + (1 - mask) * p_t + residual, warped
