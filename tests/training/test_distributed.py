"""Several processes through torchrun on the gloo backend (CPU): DDP training, sharded inference and evaluation."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tdms import distributed
from tdms.training.loop import train
from tdms.weights import read_checkpoint
from tests.training.common import config

OVERRIDES = {"train.batch": 4, "train.threads": 1, "optim.lr": 1e-3, "train.ckpt_every": 1, "train.log_every": 1}


def torchrun(module: str, args: list[str], procs: int = 2, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", "-m", module,
           *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def train_args(root, out, steps, **over) -> list[str]:
    items = {"data.root": root, "data.crop": 16, "data.sample_frames": 3, "data.workers": 0, "data.scale_min": 0.8,
             "data.scale_max": 1.2, "train.out": out, "train.steps": steps, "train.device": "cpu",
             "train.image_every": 1000, "loss.perceptual": 0.0, "model.nf": 8, **OVERRIDES, **over}
    return [f"{k}={v}" for k, v in items.items()]


def one_process(root, out, steps, resume=False):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config(root, out, **OVERRIDES, **{"train.steps": steps, "train.out": str(out)}), resume=resume)
    finally:
        torch.set_num_threads(threads)
    return read_checkpoint(out / "last.pth")


def assert_close(a: dict, b: dict, atol: float, what: str):
    """Equal up to float summation order (the processes add their halves of the batch in another order)."""
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-3, atol=atol), (what, key,
                                                                                      (a[key] - b[key]).abs().max())


@pytest.mark.slow  # torchrun
def test_two_gloo_processes_match_one_and_resume_with_another_world_size(lai_root, tmp_path):
    # one process, 4 steps straight; global batch 4 throughout
    straight = one_process(lai_root, tmp_path / "one", 4)
    first = one_process(lai_root, tmp_path / "one_1", 1)

    # two processes, 2 samples each, step 1: the same gradients (Adam's first moment is 0.1·g) and weights
    out = finish(torchrun("tdms.commands.train", train_args(lai_root, tmp_path / "ddp", 1)))
    assert "done:" in out, out
    ddp = read_checkpoint(tmp_path / "ddp" / "last.pth")
    assert ddp["step"] == 1
    grads_one = {k: v["exp_avg"] for k, v in first["optimizer"]["state"].items()}
    grads_ddp = {k: v["exp_avg"] for k, v in ddp["optimizer"]["state"].items()}
    assert grads_one.keys() == grads_ddp.keys() and len(grads_one) > 20  # one entry per parameter
    assert_close(grads_one, grads_ddp, 1e-7, "gradient")
    assert any(g.abs().max() > 1e-6 for g in grads_one.values())
    assert_close(first["model"], ddp["model"], 1e-7, "weights after step 1")
    assert (tmp_path / "ddp" / "run.json").read_text().count('"world_size": 2') == 1

    # resume it with two processes (steps 2-3), then with one (step 4): the same run as straight
    out = finish(torchrun("tdms.commands.train", ["--resume", *train_args(lai_root, tmp_path / "ddp", 3)]))
    assert "done:" in out, out
    assert read_checkpoint(tmp_path / "ddp" / "last.pth")["step"] == 3
    resumed = one_process(lai_root, tmp_path / "ddp", 4, resume=True)
    assert resumed["step"] == 4
    assert_close(straight["model"], resumed["model"], 1e-6, "weights after step 4")


def test_the_global_batch_must_divide_over_the_processes(lai_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="train.batch=4 is the global batch.*3 processes"):
        train(config(lai_root, tmp_path, **OVERRIDES))
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK=3 does not fit WORLD_SIZE=3"):
        distributed.from_env()


def children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids]


def rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.slow  # torchrun
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker through /proc (Linux)")
def test_a_dead_worker_stops_the_run_and_the_last_checkpoint_stays_valid(lai_root, tmp_path):
    run = tmp_path / "ddp"
    proc = torchrun("tdms.commands.train", train_args(lai_root, run, 100000))
    try:
        deadline = time.time() + 120
        while not (run / "last.pth").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "no checkpoint within 2 minutes"
            time.sleep(0.2)
        workers = {rank_of(p): p for p in children(proc.pid)}
        os.kill(workers[1], signal.SIGKILL)
        out = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    ckpt = read_checkpoint(run / "last.pth")  # readable: written atomically by rank 0
    assert 1 <= ckpt["step"] < 100000
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    # and the run goes on from it with one process
    one_process(lai_root, run, ckpt["step"] + 1, resume=True)
    assert read_checkpoint(run / "last.pth")["step"] == ckpt["step"] + 1


@pytest.mark.slow  # torchrun
def test_dataset_inference_is_sharded_and_more_processes_than_videos_is_fine(lai_root, tmp_path):
    from tdms.commands.test import main as test_main
    from tdms.frames.io import list_frames, read_frame

    args = ["--data-dir", str(lai_root), "--phase", "test", "--device", "cpu"]
    assert test_main([*args, "--output", str(tmp_path / "one")]) == 0
    out = finish(torchrun("tdms.commands.test", [*args, "--output", str(tmp_path / "three")], procs=3))
    assert out.count("1 video(s)") == 2 and out.count("0 video(s)") == 1, out  # two videos over three ranks
    for k in range(2):
        rel = Path("gain/flicker/toy") / f"v{k}"
        a, b = list_frames(tmp_path / "one" / rel), list_frames(tmp_path / "three" / rel)
        assert [f.name for f in a] == [f.name for f in b] and len(a) == 6
        # the same frames up to thread counts and OpenCV DIS's call history (the shipped model's flow prior)
        for x, y in zip(a, b, strict=True):
            diff = np.abs(read_frame(x) - read_frame(y))
            assert diff.mean() < 1 / 255 and diff.max() < 0.1, (x, diff.mean(), diff.max())


@pytest.mark.slow  # torchrun
def test_batch_evaluation_is_sharded_and_rank_0_writes_the_tables(lai_root, tmp_path):
    import json

    from tdms.commands.evaluate import main as evaluate_main

    results = lai_root / "test" / "processed"  # "same": the processed frames as a method's results
    args = ["--data-dir", str(lai_root), "--results", f"same={results}", "--no-tracking", "--cache"]
    assert evaluate_main([*args, str(tmp_path / "cache1"), "--out", str(tmp_path / "one")]) == 0
    out = finish(torchrun("tdms.commands.evaluate", [*args, str(tmp_path / "cache2"), "--out", str(tmp_path / "two")]))
    assert "[rank 1/2]" in out and "reports in" in out, out
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["run"]["world_size"] == 2 and two["run"]["scored"] == one["run"]["scored"] == 4
    assert flat(one["tables"]) == pytest.approx(flat(two["tables"]), rel=1e-6)  # flows: other thread counts
    assert one["tables"].keys() == two["tables"].keys() and len(flat(one["tables"])) >= 8


def flat(x, key="") -> dict:
    """Nested dicts/lists -> {path: number}; strings become part of the path."""
    if isinstance(x, dict):
        return {k: v for name, item in x.items() for k, v in flat(item, f"{key}/{name}").items()}
    if isinstance(x, list):
        return {k: v for i, item in enumerate(x) for k, v in flat(item, f"{key}[{i}]").items()}
    return {f"{key}={x}": 0.0} if isinstance(x, str) or x is None else {key: float(x)}
