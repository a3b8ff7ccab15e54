"""Every config schema of tdms (training, batch evaluation, tdms-test), its YAML files and `section.key=value`
overrides (the device and precision choices are in tdms/devices.py).

Typed dataclass defaults, one flat YAML per experiment; unknown keys are errors everywhere (YAML and command
line). Training defaults follow the original TDMS-Net code (loss weights temporal 100, perceptual 10, fidelity 1,
flow 0.5, mask 1; crop 192, batch 2, Adam 1e-4) except `loss.flow_cycle`, which defaults to 0 (the original: 1)
so that configs written before the term existed (configs/tdms_offline.yaml, the shipped model's recipe) train
exactly as before; configs/paper_tdms.yaml sets it to 1.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tdms.errors import MissingFile, UserError
from tdms.files import write_bytes_atomic

ARCHS = ("tdms", "lai")


@dataclass
class ModelConfig:
    arch: str = "tdms"  # tdms | lai (Lai et al. 2018: TransformNet + ConvLSTM)
    nf: int = 32
    norm: str = "none"  # none | instance (the original said IN but never applied it)
    # reproduce the released model's forward: unchained head blocks, never-applied IN (lai: dead IN buffers)
    original_quirks: bool = False
    flow_prior: str = "none"  # none (the paper) | dis-medium | dis-fast | dis-ultrafast (nets/tdms_net.py)
    # none (the paper) | difference: the residual is bounded by |warp(O_{t-1}) - P_t| (nets/tdms_net.py)
    residual_gate: str = "none"
    # none (the paper) | forward-backward: no past where the flow prior fails the occlusion test (nets/tdms_net.py)
    occlusion_gate: str = "none"
    occlusion_ramp: int = 0  # r px: the gate is 1 - occ averaged over (2r+1)² pixels (0 = a hard switch)


@dataclass
class DataConfig:
    root: str = "data"  # Lai et al.'s layout: root/{train,test}/..., root/lists/
    phase: str = "train"
    tasks_list: str = "lists/train_tasks.txt"  # relative to root: "<dataset> <task>" a line
    crop: int = 192
    sample_frames: int = 5
    scale_min: float = 0.5
    scale_max: float = 2.0
    augment: bool = True
    frame_gap: int = 1  # > 1: a clip takes every k-th frame, k uniform in 1..frame_gap (larger motion; augment only)
    workers: int = 2
    flow_cache: str = ""  # default: <root>/cache/flow
    # validation (train.val_every): the videos of <root>/<val_phase>/, tasks from val_tasks_list (default
    # lists/<val_phase>_tasks.txt); keep them out of training: other videos and other operators
    val_phase: str = "val"
    val_tasks_list: str = ""


@dataclass
class FlowConfig:
    backend: str = "dis"  # dis | flownet2 | raft | raft-small; the flow cache is kept per backend
    preset: str = "medium"  # DIS only
    checkpoint: str = ""  # flownet2/raft weights file; "" = the default file in torch's hub cache
    device: str = "auto"  # where the flow network runs; auto = train.device


@dataclass
class LossConfig:
    temporal: float = 100.0
    # l1 (the paper) | l2: the temporal and fidelity terms as mean squares, the warping error's and PSNR's own form
    norm: str = "l1"
    # the temporal term's pixels: visibility (V of F*, the paper) | occlusion: 1 - the sample's forward-backward
    # occlusion, the pixels the warping error counts
    temporal_mask: str = "visibility"
    long_term: float = 0.0  # Lai et al.'s warp towards frame 0 (0 = off)
    perceptual: float = 10.0  # needs VGG16 weights; skipped with a message when absent
    fidelity: float = 1.0
    # the evaluation's axes (training/losses.py; 0 = off): log10(MSE(O_t, P_t) + eps) = -PSNR/10, and the squared
    # warping error relative to P's over visible pixels = 1 - D_t
    log_fidelity: float = 0.0
    log_fidelity_eps: float = 2.5e-5  # caps the PSNR the term asks for at 46 dB
    relative_temporal: float = 0.0
    # > 0: the term becomes max(0, E(O)/E(P) - target) on the batch: a consistency to reach (D_t of about
    # 1 - target) rather than a price, so log_fidelity buys all the fidelity it can at that consistency
    relative_temporal_target: float = 0.0
    flow: float = 0.5
    # L1(flow(I_{t-1}->I_t), flow(O_{t-1}->O_t)); needs flownet2/raft; the original's weight 1 in paper_tdms
    flow_cycle: float = 0.0
    mask: float = 1.0
    mask_target: str = "flow_star"  # flow_star: V of F* (the paper); own_flow: V of the net's own flow (detached);
    # occlusion: 1 - the forward-backward occlusion of F* (Ruder et al.), the pixels the warping error counts
    mask_scale: float = 1.0  # κ: the mask target is κ·V (the paper: 1); below 1 it sets how much of O_{t-1} is kept
    mask_norm: str = "l1"  # l1 (the paper; learns the median of κ·V) | l2 (learns its mean: occlusion-aware)
    mask_balance: float = 0.0  # > 0: pixels with V below it count as occluded and weigh as much as the rest (0 = off)
    alpha: float = 50.0  # visibility mask sharpness
    squared_norm: bool = False  # False: original (sum channels, then square); True: the paper's squared norm
    vgg_weights: str = ""  # a torchvision vgg16 state dict; default: torchvision's cache


@dataclass
class OptimConfig:
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    lr_step: int = 20000  # halve every 20 "epochs" of 1000 iterations
    lr_gamma: float = 0.5
    lr_min: float = 1e-5
    grad_clip: float = 0.0  # 0 = off


@dataclass
class TrainConfig:
    out: str = "runs/tdms"
    steps: int = 100000
    batch: int = 2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 20  # these three: every that many steps, 0 = off (a log and a checkpoint still end the run)
    image_every: int = 500
    ckpt_every: int = 500
    threads: int = 0  # torch CPU threads, 0 = torch's default
    amp: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only, with a GradScaler saved in the checkpoints)
    channels_last: bool = False  # NHWC memory format for the model and its inputs (faster convs on tensor cores)
    compile: bool = False  # torch.compile the model's forward (checkpoints keep the plain module's names)
    # every that many steps (0 = off): score the weights on the validation videos (training/validation.py) and
    # keep best.pth by the margin above the naive blend's curve
    val_every: int = 0
    val_frames: int = 0  # the first that many frames of each validation video (0 = all)
    val_dtype: str = "auto"  # the precision the validation runs the network in, as tdms-test --dtype


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _merge(obj, values: dict, where: str):
    """Set dataclass fields of obj from a nested dict, rejecting unknown keys and wrong types."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise UserError(f"unknown config key {path!r}; known: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key {path!r} is a section; give it a mapping")
            _merge(current, value, path)
            continue
        want = type(current)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if want is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise UserError(f"config key {path!r} wants {want.__name__}, got {value!r}")
        setattr(obj, key, value)


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what went wrong and where ("line 3, column 5")."""
    mark = getattr(e, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or type(e).__name__}{where}"


def parse_override(text: str) -> dict:
    """'a.b=3' -> {'a': {'b': 3}}; the value is parsed as YAML (numbers, booleans, strings)."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise UserError(f"override {text!r}: the value is not valid YAML ({yaml_problem(e)})") from None
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls=Config):
    """Defaults, then the YAML file, then the overrides, in that order."""
    cfg = cls()
    if path:
        path = Path(path)
        if not path.is_file():
            raise MissingFile(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({yaml_problem(e)})") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: the top level must be a mapping")
        try:
            _merge(cfg, values, "")
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None
    for text in overrides:
        _merge(cfg, parse_override(text), "")
    return cfg


def config_from_dict(values: dict, cls=Config):
    cfg = cls()
    _merge(cfg, values, "")
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path):
    write_bytes_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())














@dataclass
class DataSection:
    root: str = "data"  # Lai et al.'s layout: root/<phase>/{input,processed}, root/lists
    phase: str = "test"
    tasks_list: str = ""  # default root/lists/<phase>_tasks.txt
    annotations: str = ""  # DAVIS annotations root (<video>/%05d.png); default root/Annotations/480p


@dataclass
class FlowSection:
    backend: str = "dis"
    preset: str = "medium"
    device: str = "cpu"  # of network flow backends and of LPIPS
    checkpoint: str = ""  # flownet2 / raft weights file (default: torchvision's cache folder)
    cache: str = ""  # default root/cache/flow


@dataclass
class LpipsSection:
    enabled: bool = True
    net: str = "alex"  # alex | squeeze | vgg
    weights: str = ""  # backbone file; default torchvision's cache


@dataclass
class TrackingSection:
    enabled: bool = True
    tracker: str = "csrt"  # csrt | kcf


@dataclass
class RunSection:
    out: str = "eval"
    jobs: int = 1  # parallel processes
    resize: bool = False  # resize result frames of another size instead of failing that video
    videos: int = 3  # side-by-side comparison videos for the first N videos (0 = none)
    threads: int = 0  # torch/OpenCV threads per process; 0 = their default (1 in parallel workers)


@dataclass
class EvalConfig:
    data: DataSection = field(default_factory=DataSection)
    methods: dict = field(default_factory=dict)  # name -> results root of <task>/<dataset>/<video>/
    flow: FlowSection = field(default_factory=FlowSection)
    lpips: LpipsSection = field(default_factory=LpipsSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    run: RunSection = field(default_factory=RunSection)




@dataclass
class InferenceConfig:
    """tdms-test's settings: one flat YAML (--config), `key=value` overrides; each key is the flag's name with
    underscores (--batch-videos is batch_videos), and --lambda is `lam`."""

    input: str = ""  # original frames: a frame folder or a video file
    processed: str = ""  # per-frame processed frames (folder or video)
    output: str = ""  # output folder or video file (dataset mode: a root folder)
    data_dir: str = ""  # dataset mode: a root in Lai et al.'s layout
    phase: str = "test"
    tasks_list: str = ""  # dataset mode: '<dataset> <task>' lines; default DATA/lists/test_tasks.txt
    method: str = "tdms"  # tdms | naive | bonneel | ffmpeg-deflicker | identity
    checkpoint: str = "tdms_offline"  # a name in checkpoints/, a tdms checkpoint file, or the authors' .pth
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 where the device computes it natively, else fp32) | fp32 | bf16 | fp16 (CUDA)
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPUs and GPUs
    compile: bool = False
    cuda_graph: bool = False
    batch_videos: int = 1  # dataset mode with method tdms: this many videos of one frame size a batch
    flow: str = "dis"  # flow backend of the naive and bonneel methods
    lam: float = 1.0  # bonneel: temporal weight λ (0 = P)
    jpeg_quality: int = 0  # 1-100: JPEG frames at this quality; 0: PNG
    resize_processed: bool = False  # resize P to I's size instead of failing
    redo: bool = False  # recompute outputs that are already complete
    protocol: str = "tdms"  # tdms | original: the original test scripts' loop (tdms/inference/original.py)
    cut_reset: bool = True  # restart the recurrence (O_t = P_t) at the scene cuts found in the original frames
    crf: int = 18  # video outputs: libx264's constant rate factor (0 best .. 51 worst)
    lossless: bool = False  # video outputs: lossless RGB H.264 (libx264rgb, qp 0), which browsers do not play
    audio: bool = True  # video outputs: copy the audio of the processed video (else of the input)
    deflicker_size: int = 5  # ffmpeg-deflicker: its window in frames (2..129)
