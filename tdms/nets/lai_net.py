"""Lai et al. (ECCV 2018) "Learning Blind Video Temporal Consistency": TransformNet + ConvLSTM.

    O_t = P_t + tanh(net([P_t, O_{t-1}], [I_t, I_{t-1}], state))

An encoder of two streams (processed/output frames, original frames) with skips from the processed stream,
five residual blocks and a ConvLSTM at 1/4 resolution whose state is carried from frame to frame.
Parameter names follow Lai et al.'s `TransformNet` (conv1a..conv3, ResBlocks.k, convlstm.Gates, deconv1..3),
so their released weights load with original_quirks=True (dead IN buffers, as in TDMS-Net).
"""

import torch
import torch.nn as nn

from tdms.errors import UserError
from tdms.nets.column_conv import ColumnConvLayer
from tdms.nets.layers import NORMS, ConvLayer, ResidualBlock, ResidualChain
from tdms.nets.upsampling import UpsampleConvLayer

State = tuple[torch.Tensor, torch.Tensor]  # (hidden, cell), each (B,4nf,H/4,W/4)


class ConvLSTM(nn.Module):
    """Convolutional LSTM cell: one conv over [x, h] gives the input, forget, output and cell gates."""

    def __init__(self, ch: int, k: int = 3):
        super().__init__()
        self.ch = ch
        self.Gates = nn.Conv2d(2 * ch, 4 * ch, k, padding=k // 2)

    def forward(self, x, state: State | None = None) -> State:
        if state is None:  # zeros at the first frame
            zeros = x.new_zeros(x.shape[0], self.ch, *x.shape[2:])
            state = (zeros, zeros)
        h, c = state
        i, f, o, g = self.Gates(torch.cat((x, h), 1)).chunk(4, 1)  # Lai et al.'s gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class LaiNet(nn.Module):
    """Lai et al.'s TransformNet with a ConvLSTM. Inputs (B,3,H,W) in [0,1], H and W multiples of 4.

    forward(i_prev, i_t, o_prev, p_t, state) -> {'output', 'residual', 'state'}; pass the returned state to the
    next frame (None at the first). original_quirks=True builds Lai et al.'s never-applied IN layers (buffers only).
    """

    recurrent = True  # the training loop and inference carry `state` across frames

    def __init__(self, nf: int = 32, norm: str = "none", original_quirks: bool = False, blocks: int = 5):
        super().__init__()
        if norm not in NORMS:
            raise UserError(f"norm must be one of {NORMS}, got {norm!r}")
        q = original_quirks

        def conv(cin, cout, k, stride=1):
            return ConvLayer(cin, cout, k, stride, norm, q)

        self.conv1a = conv(6, nf, 7)  # cat(P_t, O_{t-1})
        self.conv1b = conv(6, nf, 7)  # cat(I_t, I_{t-1})
        self.conv2a = conv(nf, nf * 2, 3, 2)
        self.conv2b = conv(nf, nf * 2, 3, 2)
        self.conv3 = conv(nf * 4, nf * 4, 3, 2)
        self.ResBlocks = ResidualChain(*[ResidualBlock(nf * 4, norm, q) for _ in range(blocks)])
        self.convlstm = ConvLSTM(nf * 4)
        self.deconv1 = UpsampleConvLayer(nf * 4, nf * 2, 3, 1, norm, q)
        self.deconv2 = UpsampleConvLayer(nf * 4, nf, 3, 1, norm, q)  # 2nf upsampled + 2nf skip (E2a)
        self.deconv3 = ColumnConvLayer(nf * 2, 3, 7)  # nf + nf skip (E1a); no norm in the original either
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, i_prev, i_t, o_prev, p_t, state: State | None = None) -> dict:
        h, w = i_t.shape[-2:]
        if h % 4 or w % 4:
            raise UserError(f"LaiNet needs H and W divisible by 4, got {h}×{w} (pad the frames)")
        act = self.relu
        e1a = act(self.conv1a(torch.cat((p_t, o_prev), 1)))
        e1b = act(self.conv1b(torch.cat((i_t, i_prev), 1)))
        e2a = act(self.conv2a(e1a))
        e2b = act(self.conv2b(e1b))
        e3 = act(self.conv3(torch.cat((e2a, e2b), 1)))
        state = self.convlstm(self.ResBlocks(e3), state)
        d = act(self.deconv1(state[0]))
        d = act(self.deconv2(torch.cat((d, e2a), 1)))
        residual = torch.tanh(self.deconv3(torch.cat((d, e1a), 1)))
        return {"output": p_t + residual, "residual": residual, "state": state}
