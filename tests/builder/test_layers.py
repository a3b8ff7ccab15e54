"""Layered synthetic clips (exact flow and occlusion) and the operators whose flicker is not a global gain."""

import numpy as np
import pytest
import torch

from tdms.builder.layers import layered_clip, random_light, random_scene, render_clip
from tdms.builder.operators import OPERATORS, TEST_TASKS, TRAIN_TASKS, VAL_TASKS
from tdms.builder.sources import load_photo
from tdms.evaluation.metrics import warping_error_pair
from tdms.flow.warp import warp

SIZE = (128, 96)
# operators added for flicker that a single blend weight cannot remove, and the validation ones
LOCAL = ("local/gainfield", "color/hue", "noise/dither", "tonemap/local", "colorize/chroma", *VAL_TASKS)


@pytest.fixture(scope="module")
def photos():
    small = {name: np.ascontiguousarray(load_photo(name)[::3, ::3]) for name in ("astronaut", "coffee", "chelsea")}
    return small["astronaut"], [small["coffee"], small["chelsea"]]


@pytest.fixture(scope="module")
def sharp_clip(photos):
    """8 frames, fast motion, no lighting change and no blur: warping by the exact flow must give the next frame."""
    background, sources = photos
    scene = random_scene(background, sources, 8, SIZE, np.random.default_rng(5), speed=2.0, pan=1.5)
    return render_clip(scene, 8)


def _warp_error(prev, frame, flow):
    """(H, W) mean over channels of |warp(prev, flow) - frame|."""
    warped = warp(torch.from_numpy(prev).permute(2, 0, 1)[None], torch.from_numpy(flow)[None])[0]
    return np.abs(warped.permute(1, 2, 0).numpy() - frame).mean(-1)


def test_warping_by_the_exact_flow_reproduces_the_frame_outside_occlusions(sharp_clip):
    clip = sharp_clip
    assert clip.flows.shape == (8, 2, 96, 128) and clip.occluded.shape == (8, 96, 128)
    assert not clip.occluded[0].any() and not clip.flows[0].any()
    occluded_share = []
    for t in range(1, 8):
        visible = ~clip.occluded[t]
        error = _warp_error(clip.frames[t - 1], clip.frames[t], clip.flows[t])
        still = np.abs(clip.frames[t - 1] - clip.frames[t]).mean(-1)  # the error of a zero flow
        assert error[visible].mean() < 0.012, t
        assert error[visible].mean() < 0.25 * still[visible].mean(), t
        assert np.percentile(error[visible], 99) < 0.12, t
        occluded_share.append(clip.occluded[t].mean())
        if clip.occluded[t].mean() > 0.01:  # the mask marks where the warp is wrong, not random pixels
            assert error[clip.occluded[t]].mean() > 3 * error[visible].mean(), t
    assert 0.005 < np.mean(occluded_share) < 0.5


def test_objects_have_their_own_motion_and_occlude(photos):
    background, sources = photos
    scene = random_scene(background, sources, 8, SIZE, np.random.default_rng(7), objects=(3, 3), speed=1.5)
    assert len(scene.movers) == 3
    clip = render_clip(scene, 8)
    # the camera's flow alone is wrong on the objects: replace their flow by the background's and the error grows
    from tdms.builder.sources import camera_flow

    t = 4
    camera_only = camera_flow(scene.camera(t), scene.camera(t - 1), SIZE)
    visible = ~clip.occluded[t]
    exact = _warp_error(clip.frames[t - 1], clip.frames[t], clip.flows[t])[visible].mean()
    wrong = _warp_error(clip.frames[t - 1], clip.frames[t], camera_only)[visible].mean()
    assert wrong > 2 * exact
    # fast objects: several pixels a frame, relative to the background
    relative = np.abs(clip.flows[t] - camera_only).max()
    assert relative > 2.0


def test_layered_clip_is_deterministic_and_lit(photos):
    background, sources = photos
    a = layered_clip(background, sources, 5, SIZE, np.random.default_rng(3), blur=1.0)
    b = layered_clip(background, sources, 5, SIZE, np.random.default_rng(3), blur=1.0)
    np.testing.assert_array_equal(np.stack(a.frames), np.stack(b.frames))
    np.testing.assert_array_equal(a.flows, b.flows)
    assert all(f.shape == (96, 128, 3) and f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1 for f in a.frames)
    assert not np.allclose(a.light, 1)


def test_light_ramps_or_flashes(photos):
    lights = [random_light(24, SIZE, np.random.default_rng(seed)) for seed in range(8)]
    for light in lights:
        mean = light.mean(axis=(1, 2, 3))
        assert np.abs(np.diff(mean)).max() > 0.02  # a real change of I within a few frames, not only the drift
    spatial = [light[0].std(axis=(0, 1)).max() for light in lights]
    assert max(spatial) > 0.02 and min(spatial) < 1e-6  # a spot light in some clips, none in others


def test_motion_blur_smooths_moving_content(photos):
    background, sources = photos
    scene = random_scene(background, sources, 4, SIZE, np.random.default_rng(11), speed=3.0, pan=2.0)
    sharp, blurred = render_clip(scene, 4), render_clip(scene, 4, exposure=1.0)

    def detail(frames):
        return np.mean([np.abs(np.diff(f, axis=1)).mean() for f in frames])

    assert detail(blurred.frames) < 0.9 * detail(sharp.frames)
    np.testing.assert_array_equal(sharp.flows, blurred.flows)  # flows are those of the exposure centres


def test_the_three_operator_sets_are_disjoint():
    assert not set(TRAIN_TASKS) & set(VAL_TASKS) and not set(VAL_TASKS) & set(TEST_TASKS)
    assert set(LOCAL) <= set(OPERATORS)


def _e_warp(frames, clip):
    """Mean warping error over the clip with its exact flow and occlusion."""
    return np.mean(
        [warping_error_pair(frames[t - 1], frames[t], clip.flows[t], clip.occluded[t]) for t in range(1, 8)]
    )


@pytest.mark.parametrize("task", LOCAL)
def test_new_operators_flicker(task, sharp_clip):
    rng = np.random.default_rng(0)
    processed = [OPERATORS[task](frame, rng) for frame in sharp_clip.frames]
    ratio = _e_warp(processed, sharp_clip) / _e_warp(sharp_clip.frames, sharp_clip)
    assert ratio > 1.5, ratio
