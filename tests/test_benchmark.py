"""The benchmark: every key of its JSON with sane values (no timing asserts), and its building blocks."""

import json
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from benchmark import main
from kernels import conv_macs, make_clip, paired_ratio, reference_matmul
from measure import naive_frames_on_disk
from training_rate import flows_on_crops

from tdms.devices import auto_dtype, cpu_info
from tdms.frames.io import read_frame
from tdms.nets.tdms_net import TDMSNet
from tdms.nets.upsampling import UpsampleConvLayer

PER_SIZE = ("height", "width", "frames", "gmac_per_frame", "forward_variants", "dtype", "channels_last", "compile",
            "cuda_graph", "end_to_end_fps", "forward_fps", "naive_fps", "batched_videos", "batched_fps",
            "batched_forward_fps", "end_to_end_over_forward", "end_to_end_over_naive", "peak_gflops",
            "achieved_gflops", "fraction_of_peak", "fp32_forward_fps", "fp32_achieved_gflops", "fp32_peak_gflops",
            "fp32_fraction_of_peak", "peak_memory_mb", "output_layers")
TRAIN = ("train_steps_per_s_cached", "train_steps_per_s_on_the_fly", "train_samples_per_s_cached",
         "train_samples_per_s_on_the_fly", "train_cached_over_on_the_fly", "train_flow_s_per_step",
         "train_peak_memory_mb")


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_json_has_every_key_with_sane_values(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["--sizes", "44x36", "32x24", "--frames", "1", "--batch-videos", "2", "--train-steps", "1",
                 "--train-crop", "32", "--device", "cpu", "--json", str(out), "--plot", str(tmp_path / "b.png"),
                 "--profile"]) == 0
    r = json.loads(out.read_text())
    assert [(s["width"], s["height"]) for s in r["sizes"]] == [(44, 36), (32, 24)]
    for s in r["sizes"]:
        assert set(PER_SIZE) <= set(s)
        for key in ("end_to_end_fps", "forward_fps", "naive_fps", "batched_fps", "batched_forward_fps",
                    "peak_gflops", "achieved_gflops", "fp32_peak_gflops", "peak_memory_mb"):
            assert positive(s[key]), (key, s[key])
        assert set(s["forward_variants"]) == {"fp32 nchw", "fp32 channels_last", "bf16 channels_last"}
        # dtype auto: the rest ran in the fastest variant
        best = max(s["forward_variants"], key=s["forward_variants"].get)
        assert best.split()[0] == s["dtype"] and s["channels_last"] == best.endswith("channels_last")
        assert s["end_to_end_over_naive"] == pytest.approx(s["end_to_end_fps"] / s["naive_fps"])
        assert s["achieved_gflops"] == pytest.approx(2 * s["gmac_per_frame"] * s["forward_fps"])
        assert s["batched_videos"] == 2 and s["frames"] == 1
        assert set(s["output_layers"]) == {"deconv3", "deconv3_w", "deconv3_f"}
        # the first row is tdms-test without flags; the conv rate stands next to the matmul peak
        assert positive(s["default_fps"]) and 0 <= s["sys_time_fraction"] < 1
        assert s["default_dtype"] == auto_dtype("cpu") and s["default_channels_last"] is True
        for key in ("", "fp32_"):  # the forward against the conv and the matmul, measured in turns
            for figure in ("conv_gflops", "paired_forward_gflops", "fraction_of_conv", "peak_gflops",
                           "fraction_of_peak"):
                assert positive(s[f"{key}{figure}"]), (key, figure)
        assert s["profile"] and all(e["ms"] >= 0 and 0 <= e["share"] <= 1 for e in s["profile"])
        assert any("conv" in e["op"] for e in s["profile"])
        for layer in s["output_layers"].values():
            for key in ("plain_forward_ms", "columns_forward_ms", "plain_forward_backward_ms",
                        "columns_forward_backward_ms"):
                assert positive(layer[key]), (key, layer)
            assert layer["max_abs_diff"] < (0.05 if s["dtype"] == "bf16" else 1e-4)  # the same function
    # the top level keeps the first version's keys (the first size) and adds the device-wide ones
    for key in PER_SIZE:
        assert r[key] == r["sizes"][0][key]
    assert r["device"].startswith("cpu") and r["torch"] == torch.__version__
    assert r["cpu"] == cpu_info()
    for key in TRAIN:
        assert positive(r[key]), (key, r[key])
    assert r["train_samples_per_s_cached"] == pytest.approx(2 * r["train_steps_per_s_cached"])
    assert r["train_crop"] == 32 and r["train_flow"] == "dis-medium"
    # training ran in the config the first size picked, through the trainer's loader
    assert (r["train_amp"], r["train_channels_last"]) == (r["dtype"], r["channels_last"])
    assert r["train_workers"] == 2
    # the flow's share explains the ratio: 1/fly = 1/cached + flow (up to timing noise in loading)
    assert r["train_flow_s_per_step"] < 1 / r["train_steps_per_s_on_the_fly"]
    assert {t["key"] for t in r["targets"]} == {"end_to_end_over_forward", "end_to_end_over_naive",
                                                "fp32_fraction_of_peak", "train_cached_over_on_the_fly"}
    picture = cv2.imread(str(tmp_path / "b.png"))
    assert picture is not None and picture.shape[0] >= 300 and picture.std() > 0  # a drawn chart, not a blank
    table = capsys.readouterr().out
    assert "44×36" in table and "naive (fp32 NCHW, JPEG each step)" in table and "cached" in table
    assert table.index("tdms-test, no flags") < table.index("forward fp32") and "self CPU time per op" in table
    assert cpu_info()["model"] in table


def test_bad_sizes_are_usage_errors():
    for bad in ("854", "854x", "8x8"):
        with pytest.raises(SystemExit) as e:
            main(["--sizes", bad])
        assert e.value.code == 2


def test_conv_macs_counts_each_tap():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3)  # 8×8 -> 6×6
            self.up = nn.ConvTranspose2d(5, 2, 3, stride=2)  # each of the 6×6×5 inputs meets 2×3×3 taps

        def forward(self, a, b, c, d):
            return self.up(self.conv(a))

    assert conv_macs(Two(), 8, 8) == 6 * 6 * 5 * 3 * 9 + 6 * 6 * 5 * 2 * 9
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = UpsampleConvLayer(5, 2, 3)

        def forward(self, a, b, c, d):
            return self.up(a[:, :1].expand(-1, 5, -1, -1))

    assert conv_macs(Up(), 6, 8) == 7 * 9 * 4 * 2 * 5 * 4  # as run: 4 phases of 2×2 taps on the 7×9 padded input
    net = TDMSNet(nf=8)
    assert 3.9 < conv_macs(net, 32, 40) / conv_macs(net, 16, 20) < 4  # ~ the pixels (the phase convs pad by 1)
    from tdms.flow.dis import DISFlow

    with_prior = TDMSNet(nf=8, prior_flow=DISFlow("fast"))  # the same convolutions; DIS is not counted
    assert conv_macs(with_prior, 32, 40) == conv_macs(net, 32, 40)
    gated = TDMSNet(nf=8, prior_flow=DISFlow("fast"), occlusion_gate="forward-backward", occlusion_ramp=4)
    assert conv_macs(gated, 32, 40) == conv_macs(net, 32, 40)  # (the shipped network: the gate's DIS is skipped)


def test_paired_ratio_measures_both_in_turns():
    cpu = torch.device("cpu")
    calls = []
    reference = (lambda: calls.append("reference"), 1e6)
    r = paired_ratio(lambda: calls.append("forward"), 2e6, reference, cpu, rounds=3)
    assert calls.count("forward") == 1 + 3 and calls.count("reference") >= 3 + 3  # a warm-up, then turns
    assert all(positive(r[k]) for k in ("reference_gflops", "forward_gflops", "ratio"))
    run, flops = reference_matmul(cpu, "fp32", n=32)
    assert run().shape == (32, 32) and flops == 2 * 32**3


def test_flows_on_crops_pair_each_frame_with_the_previous():
    ins = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1, 1).expand(2, 4, 3, 5, 6)

    def backend(a, b):  # a "flow" that records which frames it saw
        return torch.cat([a[:, :1], b[:, :1]], 1)

    f = flows_on_crops(backend, ins)
    assert f.shape == (2, 3, 2, 5, 6)
    assert torch.equal(f[1, 2, :, 0, 0], torch.tensor([7.0, 6.0]))  # clip 1: F*_3 = flow(I_3 -> I_2)


def test_naive_path_runs_the_network_from_jpeg_files(tmp_path):
    torch.manual_seed(0)
    net = TDMSNet(nf=8).eval()
    clip = tmp_path / "clip"
    make_clip(clip / "input", clip / "processed", 3, 30, 38)
    assert naive_frames_on_disk(net, torch.device("cpu"), clip, tmp_path / "out") == 2
    # frame 1 by hand, from the same JPEGs (O_0 = P_0 went through one more JPEG round trip)
    x = [torch.from_numpy(read_frame(p).transpose(2, 0, 1))[None] for p in
         (clip / "input" / "00000.jpg", clip / "input" / "00001.jpg", tmp_path / "out" / "00000.jpg",
          clip / "processed" / "00001.jpg")]
    x = [nn.functional.pad(v, (0, 2, 0, 2), mode="reflect") for v in x]
    with torch.no_grad():
        want = net(*x)["output"][0, :, :30, :38].clamp(0, 1).permute(1, 2, 0).numpy()
    cv2.imwrite(str(tmp_path / "want.jpg"), (want * 255).round().astype(np.uint8)[..., ::-1])
    got = read_frame(tmp_path / "out" / "00001.jpg")
    assert np.array_equal(got, read_frame(tmp_path / "want.jpg"))
    assert np.abs(got - read_frame(clip / "processed" / "00001.jpg")).mean() > 0.05  # not a copy of P_1


def test_ab_forward_holds_this_checkout_against_a_git_revision(capsys):
    """Against HEAD's package (git archive, imported as tdms_rev): both forwards run on the same weights, in turns,
    and give the same output in fp32 unless the working tree changed the network's function."""
    import ab_forward

    assert ab_forward.main(["--rev", "HEAD", "--size", "32x24", "--rounds", "2", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "2 rounds alternated" in out and "this checkout" in out and "median / HEAD's 1.000" in out
    assert float(out.split("largest output difference ")[1].split()[0]) < 1e-4
    with pytest.raises(SystemExit, match="not-a-revision"):
        ab_forward.main(["--rev", "not-a-revision", "--size", "32x24", "--rounds", "1"])
