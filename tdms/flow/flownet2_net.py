"""FlowNet2 (Ilg et al., CVPR 2017) in plain PyTorch, with the module names of NVIDIA's flownet2-pytorch.

The names and shapes are those of `FlowNet2_checkpoint.pth.tar` (162,518,834 parameters, batch norm off),
so its state dict loads unchanged. Inputs are mean-subtracted RGB pairs whose sides are multiples of 64;
`tdms.flow.flownet2` does that preparation.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdms.flow.correlation import channel_norm, correlation
from tdms.flow.warp import warp

DIV_FLOW = 20.0  # the sub-networks predict flow / 20 (the SD branch's output is divided by 20 instead)
# Decoder widths shared by FlowNetC/S/SD, per level l (stride 2**l): deconv outputs and encoder skip channels.
DECONV_OUT = {5: 512, 4: 256, 3: 128, 2: 64}
SKIPS = {5: 512, 4: 512, 3: 256, 2: 128}


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv with bias + LeakyReLU(0.1), 'same' padding (keys <name>.0.weight/bias)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2), nn.LeakyReLU(0.1, inplace=True))


def deconv(cin: int, cout: int) -> nn.Sequential:
    """×2 transposed conv 4×4 + LeakyReLU(0.1)."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.1, inplace=True))


def predict_flow(cin: int) -> nn.Conv2d:
    return nn.Conv2d(cin, 2, 3, 1, 1)


def upsample_flow(bias: bool) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(2, 2, 4, 2, 1, bias=bias)


class Refinement(nn.Module):
    """The coarse-to-fine decoder shared by FlowNetC, FlowNetS and FlowNetSD (levels 6 -> 2).

    Level l: flow_l from the features, deconv_l-1 and upsampled flow_l concatenated with the encoder's
    skip of level l-1. FlowNetSD adds an 'inter_conv' (conv without activation) before each prediction.
    """

    def add_decoder(self, upflow_bias: bool, inter: bool) -> None:
        """Register deconv/inter_conv/predict_flow/upsampled_flow layers under NVIDIA's names."""
        self.inter = inter
        self.predict_flow6 = predict_flow(1024)
        width = 1024  # channels entering deconv{lvl}
        for lvl in (5, 4, 3, 2):
            out = DECONV_OUT[lvl]
            self.add_module(f"upsampled_flow{lvl + 1}_to_{lvl}", upsample_flow(upflow_bias))
            self.add_module(f"deconv{lvl}", deconv(width, out))
            width = SKIPS[lvl] + out + 2  # concat of encoder skip, deconv output, upsampled flow
            if inter:
                self.add_module(f"inter_conv{lvl}", nn.Sequential(nn.Conv2d(width, out, 3, 1, 1)))
            self.add_module(f"predict_flow{lvl}", predict_flow(out if inter else width))

    def decode(self, top: torch.Tensor, skips: dict) -> torch.Tensor:
        """top: (B,1024,H/64,W/64); skips: level -> features at stride 2**level. Returns flow2 (B,2,H/4,W/4)."""
        feat = top
        flow = self.predict_flow6(top)
        for lvl in (5, 4, 3, 2):
            up = getattr(self, f"upsampled_flow{lvl + 1}_to_{lvl}")(flow)
            feat = torch.cat((skips[lvl], getattr(self, f"deconv{lvl}")(feat), up), 1)
            head = getattr(self, f"inter_conv{lvl}")(feat) if self.inter else feat
            flow = getattr(self, f"predict_flow{lvl}")(head)
        return flow


class FlowNetC(Refinement):
    """Siamese encoder to stride 8, 441-channel correlation, then the FlowNetS decoder."""

    def __init__(self):
        super().__init__()
        self.conv1 = conv(3, 64, 7, 2)
        self.conv2 = conv(64, 128, 5, 2)
        self.conv3 = conv(128, 256, 5, 2)
        self.conv_redir = conv(256, 32, 1)
        self.conv3_1 = conv(32 + 441, 256)  # 473 = redirected features + correlation
        self.conv4, self.conv4_1 = conv(256, 512, stride=2), conv(512, 512)
        self.conv5, self.conv5_1 = conv(512, 512, stride=2), conv(512, 512)
        self.conv6, self.conv6_1 = conv(512, 1024, stride=2), conv(1024, 1024)
        self.add_decoder(upflow_bias=True, inter=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Two normalised (B,3,H,W) images -> flow2 / 20 at (H/4, W/4)."""
        c2a = self.conv2(self.conv1(x1))
        c3a = self.conv3(c2a)
        c3b = self.conv3(self.conv2(self.conv1(x2)))
        corr = F.leaky_relu(correlation(c3a, c3b), 0.1)
        c3 = self.conv3_1(torch.cat((self.conv_redir(c3a), corr), 1))
        c4 = self.conv4_1(self.conv4(c3))
        c5 = self.conv5_1(self.conv5(c4))
        c6 = self.conv6_1(self.conv6(c5))
        return self.decode(c6, {5: c5, 4: c4, 3: c3, 2: c2a})


class FlowNetS(Refinement):
    """Plain encoder-decoder on 12 stacked channels (image pair, warped image, flow, error)."""

    def __init__(self, in_channels: int = 12):
        super().__init__()
        self.conv1 = conv(in_channels, 64, 7, 2)
        self.conv2 = conv(64, 128, 5, 2)
        self.conv3, self.conv3_1 = conv(128, 256, 5, 2), conv(256, 256)
        self.conv4, self.conv4_1 = conv(256, 512, stride=2), conv(512, 512)
        self.conv5, self.conv5_1 = conv(512, 512, stride=2), conv(512, 512)
        self.conv6, self.conv6_1 = conv(512, 1024, stride=2), conv(1024, 1024)
        self.add_decoder(upflow_bias=False, inter=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c2 = self.conv2(self.conv1(x))
        c3 = self.conv3_1(self.conv3(c2))
        c4 = self.conv4_1(self.conv4(c3))
        c5 = self.conv5_1(self.conv5(c4))
        c6 = self.conv6_1(self.conv6(c5))
        return self.decode(c6, {5: c5, 4: c4, 3: c3, 2: c2})


class FlowNetSD(Refinement):
    """Small-displacement network: 3×3 kernels from full resolution, inter_conv before each prediction."""

    def __init__(self):
        super().__init__()
        self.conv0 = conv(6, 64)
        self.conv1, self.conv1_1 = conv(64, 64, stride=2), conv(64, 128)
        self.conv2, self.conv2_1 = conv(128, 128, stride=2), conv(128, 128)
        self.conv3, self.conv3_1 = conv(128, 256, stride=2), conv(256, 256)
        self.conv4, self.conv4_1 = conv(256, 512, stride=2), conv(512, 512)
        self.conv5, self.conv5_1 = conv(512, 512, stride=2), conv(512, 512)
        self.conv6, self.conv6_1 = conv(512, 1024, stride=2), conv(1024, 1024)
        self.add_decoder(upflow_bias=True, inter=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.conv1_1(self.conv1(self.conv0(x)))
        c2 = self.conv2_1(self.conv2(c1))
        c3 = self.conv3_1(self.conv3(c2))
        c4 = self.conv4_1(self.conv4(c3))
        c5 = self.conv5_1(self.conv5(c4))
        c6 = self.conv6_1(self.conv6(c5))
        return self.decode(c6, {5: c5, 4: c4, 3: c3, 2: c2})


class FlowNetFusion(nn.Module):
    """Fuses the SD and CSS flows at full resolution from 11 channels; output is flow in pixels."""

    def __init__(self):
        super().__init__()
        self.conv0 = conv(11, 64)
        self.conv1, self.conv1_1 = conv(64, 64, stride=2), conv(64, 128)
        self.conv2, self.conv2_1 = conv(128, 128, stride=2), conv(128, 128)
        self.deconv1, self.deconv0 = deconv(128, 32), deconv(162, 16)
        self.inter_conv1 = nn.Sequential(nn.Conv2d(162, 32, 3, 1, 1))  # 162 = 128 + 32 + 2
        self.inter_conv0 = nn.Sequential(nn.Conv2d(82, 16, 3, 1, 1))  # 82 = 64 + 16 + 2
        self.predict_flow2, self.predict_flow1 = predict_flow(128), predict_flow(32)
        self.predict_flow0 = predict_flow(16)
        self.upsampled_flow2_to_1, self.upsampled_flow1_to_0 = upsample_flow(True), upsample_flow(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0 = self.conv0(x)
        c1 = self.conv1_1(self.conv1(c0))
        c2 = self.conv2_1(self.conv2(c1))
        cat1 = torch.cat((c1, self.deconv1(c2), self.upsampled_flow2_to_1(self.predict_flow2(c2))), 1)
        flow1 = self.predict_flow1(self.inter_conv1(cat1))
        cat0 = torch.cat((c0, self.deconv0(cat1), self.upsampled_flow1_to_0(flow1)), 1)
        return self.predict_flow0(self.inter_conv0(cat0))


def up4(flow: torch.Tensor, mode: str) -> torch.Tensor:
    """×4 upsampling as nn.Upsample(scale_factor=4) on current PyTorch (bilinear: align_corners=False)."""
    return F.interpolate(flow, scale_factor=4, mode=mode, align_corners=False if mode == "bilinear" else None)


def warp_error(x1: torch.Tensor, x2: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 resampled onto x1 by flow (Resample2d, in float32 as the original) and the L2 error map (B,1,H,W)."""
    warped = warp(x2.float(), flow.float()).to(x2.dtype)
    return warped, channel_norm(x1 - warped)


class FlowNet2(nn.Module):
    """FlowNet2 = FlowNetC -> FlowNetS -> FlowNetS, FlowNetSD in parallel, fused.

    forward(x1, x2): normalised (B,3,H,W) images (RGB minus the pair's channel means, in rgb_max units),
    H and W multiples of 64 -> flow x1 -> x2 (B,2,H,W) in pixels.
    """

    def __init__(self):
        super().__init__()
        self.flownetc = FlowNetC()
        self.flownets_1 = FlowNetS()
        self.flownets_2 = FlowNetS()
        self.flownets_d = FlowNetSD()
        self.flownetfusion = FlowNetFusion()

    def stacked(self, x1: torch.Tensor, x2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """The 12-channel input of a FlowNetS stage: pair, warped x2, flow / 20, brightness error."""
        warped, err = warp_error(x1, x2, flow)
        return torch.cat((x1, x2, warped, flow / DIV_FLOW, err), 1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        flow_c = up4(self.flownetc(x1, x2) * DIV_FLOW, "bilinear")
        flow_s1 = up4(self.flownets_1(self.stacked(x1, x2, flow_c)) * DIV_FLOW, "bilinear")
        flow_s2 = up4(self.flownets_2(self.stacked(x1, x2, flow_s1)) * DIV_FLOW, "nearest")
        # The released SD weights expect their flow divided by 20 here, not multiplied (as in the original).
        flow_sd = up4(self.flownets_d(torch.cat((x1, x2), 1)) / DIV_FLOW, "nearest")
        _, err_sd = warp_error(x1, x2, flow_sd)
        _, err_s2 = warp_error(x1, x2, flow_s2)
        fused_in = torch.cat((x1, flow_sd, flow_s2, channel_norm(flow_sd), channel_norm(flow_s2), err_sd, err_s2), 1)
        return self.flownetfusion(fused_in)
