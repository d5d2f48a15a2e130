"""FVD, FID and IS for HVG's videos, all three from one I3D network (Kinetics-400).

What this file is in HVG
------------------------
A video GAN is judged by comparing statistics of its samples with statistics
of real clips, as seen by a video classifier. The classifier is I3D (Carreira
& Zisserman 2017: Inception-v1 "inflated" to 3-D convolutions, trained to
classify the 400 actions of Kinetics-400). From its outputs:

    FVD  (Unterthiner et al. 2018)   Frechet distance between two Gaussians,
         fitted to the 400-d logits of real and of generated clips.   lower = better
    FID  the same distance on I3D's 1024-d pooled features (as DVD-GAN and HVG
         report "FID" for video).                                      lower = better
    IS   exp E_x[ KL( p(y|x) || p(y) ) ] from I3D's class probabilities.  higher = better

The numbers only mean something under a fixed protocol, written out in
`Protocol` below (2048 clips of 16 frames, each frame resized to 224x224 with
bilinear interpolation, values in [-1, 1], logits averaged over time).
Change any of it and the scores are no longer comparable with papers; see
README ("Metrics") for the pitfalls.

Weights are never downloaded: pass a file with `--i3d PATH` or `HVG_I3D=PATH`.
Two formats load:
  * i3d_pretrained_400.pt   a state dict of the common PyTorch port
    (piergiaj/pytorch-i3d, used by VideoGPT and TATS); `InceptionI3d` below
    has exactly its keys and shapes, so it loads unchanged (weights_only=True).
  * i3d_torchscript.pt      StyleGAN-V's TorchScript export of the TF-Hub I3D
    that the original FVD code uses. It gives logits only, so no FID.

Shapes
------
    videos         (B, 3, T, H, W) float in [-1, 1], any H, W; T = 16 in the protocol
                   (any T >= 9 pools exactly as the port; shorter clips still run)
    i3d_logits  -> (B, 400)        the FVD and IS input
    i3d_features-> (B, 1024)       the FID input

Run
---
    # real data from data.py (a dataset name + preset/level) or a folder of videos,
    # generated videos from a folder of files (e.g. written by sample.py):
    python metrics.py --real synthetic --preset tiny --fake samples/                 # no download
    python metrics.py --real synthetic --preset tiny --fake samples/ --i3d i3d_pretrained_400.pt
    python metrics.py --real kinetics600 --real-root /data/k600 --fake samples/ \\
        --i3d ~/.cache/hvg/i3d_pretrained_400.pt --device cuda --out metrics.json

Without I3D weights it gives the download-free numbers (the two-sample accuracy
and the motion ratio, below); with them FVD, FID and IS too. Scoring a trained
hierarchy from its run folders, level by level, is evaluate.py's job
(`python evaluate.py --real synthetic --runs runs/tiny`): this file sits below
the level scripts (they import TrainingEvaluator for --eval-every), so it never
imports sample.py or a level.

From Python (training scripts, notebooks):
    model = load_i3d("i3d_pretrained_400.pt", device="cuda")
    score = fvd(real_videos, fake_videos, model)           # float
    evaluator = FVDEvaluator("i3d_pretrained_400.pt", real_loader, num_videos=256, device="cuda")
    evaluator(fake_videos)                                 # {"fvd": ..., "fid": ..., "is": ...}
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import flags
from data import PRESETS, down, make_dataset, num_levels, pad_condition
from flags import UserError
from training import resolve_device
from videos import find_videos, read_frames

I3D_ENV = "HVG_I3D"


# ----------------------------------------------------------------------------------
# The protocol: everything that changes the numbers, in one place.
# ----------------------------------------------------------------------------------

def _option(default, help: str, range: str | None = None):
    """A protocol field: its default, its --help text and (numbers) its valid range."""
    return dataclasses.field(default=default, metadata={"help": help, "range": range})


@dataclass(frozen=True)
class Protocol:
    """How clips are turned into I3D inputs. The defaults are the common FVD protocol
    (Unterthiner et al., as used by VideoGPT, TATS and StyleGAN-V): every field changes
    the score, so a result is only comparable with results computed under the same
    protocol. The CLI has one flag per field."""
    num_videos: int = _option(2048, "real and generated clips each; fewer clips bias FVD upwards", "[2, inf)")
    frames: int = _option(16, "the first `frames` frames of every clip are scored", "[1, inf)")
    resize: int = _option(224, "every frame is resized to resize x resize (I3D's input size)", "[1, inf)")
    interpolation: str = _option("bilinear", "torch interpolate mode for the resize")
    is_splits: int = _option(10, "IS is averaged over this many splits (mean, std)", "[1, inf)")

    def key(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------
# I3D (Inception-v1 inflated to 3-D), with the state-dict layout of the common port.
# ----------------------------------------------------------------------------------

def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding along one axis, as the original I3D was trained with.

    Output size is ceil(size / stride); the padding that achieves it is
        total = max((out - 1) * stride + kernel - size, 0),
    split with the extra pixel (if odd) at the end: (total // 2, total - total // 2).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Zero-pad (B, C, T, H, W) so a conv/pool with `kernel`, `stride` acts like TF 'SAME'."""
    pads = []
    # F.pad lists the last axis first: (W_before, W_after, H_before, H_after, T_before, T_after)
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):
        pads += same_padding(size, k, s)
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (SAME padding, no bias) -> BatchNorm3d -> ReLU: I3D's building block.

    The logits layer is also a Unit3D, with a bias and neither BN nor ReLU.
    Attribute names (`conv3d`, `bn`) are the port's, so its state dict loads.
    """

    def __init__(self, in_channels, out_channels, kernel=(1, 1, 1), stride=(1, 1, 1),
                 batch_norm=True, relu=True, bias=False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=bias)
        # eps=1e-3 is the TF original's (and piergiaj's); VideoGPT's copy uses 1e-5,
        # a difference that only matters for channels with a tiny running variance.
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x):
        x = self.conv3d(pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pooling with TF 'SAME' padding.

    The padding is zeros (as in the port), which equals TF's "ignore the padding"
    because every pool in I3D follows a ReLU: its inputs are >= 0 already.
    """

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four parallel branches, concatenated on channels:
        b0: 1x1x1 | b1: 1x1x1 -> 3x3x3 | b2: 1x1x1 -> 3x3x3 | b3: 3x3x3 max-pool -> 1x1x1
    `widths` = (b0, b1a, b1b, b2a, b2b, b3b) output channels; out = b0 + b1b + b2b + b3b.
    """

    def __init__(self, in_channels, widths):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = Unit3D(in_channels, b0)
        self.b1a = Unit3D(in_channels, b1a)
        self.b1b = Unit3D(b1a, b1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, b2a)
        self.b2b = Unit3D(b2a, b2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, b3b)

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """The Kinetics-400 I3D, layer for layer the architecture of the common port.

    Shapes for the protocol's input (B, 3, 16, 224, 224):
        trunk          -> (B, 1024, 2, 7, 7)
        2x7x7 avg pool -> (B, 1024, 1, 1, 1)   "pooled features" (FID)
        1x1x1 conv     -> (B, 400, 1, 1, 1)    logits, averaged over time (FVD, IS)
    Longer clips give more pooled positions in time; their logits are averaged.
    Dropout (before the logits in training) is left out: it is the identity at eval.
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.num_classes = num_classes
        # Shape comments: channels and size relative to the input (T, H, W).
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))              # 64,   T/2, H/2
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))           # 64,   T/2, H/4
        self.Conv3d_2b_1x1 = Unit3D(64, 64)                                    # 64
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))                       # 192
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))           # 192,  T/2, H/8
        self.Mixed_3b = InceptionModule(192, (64, 96, 128, 16, 32, 32))      # 256
        self.Mixed_3c = InceptionModule(256, (128, 128, 192, 32, 96, 64))    # 480
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))           # 480,  T/4, H/16
        self.Mixed_4b = InceptionModule(480, (192, 96, 208, 16, 48, 64))     # 512
        self.Mixed_4c = InceptionModule(512, (160, 112, 224, 24, 64, 64))    # 512
        self.Mixed_4d = InceptionModule(512, (128, 128, 256, 24, 64, 64))    # 512
        self.Mixed_4e = InceptionModule(512, (112, 144, 288, 32, 64, 64))    # 528
        self.Mixed_4f = InceptionModule(528, (256, 160, 320, 32, 128, 128))  # 832
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))           # 832,  T/8, H/32
        self.Mixed_5b = InceptionModule(832, (256, 160, 320, 32, 128, 128))  # 832
        self.Mixed_5c = InceptionModule(832, (384, 192, 384, 48, 128, 128))  # 1024
        self.logits = Unit3D(1024, num_classes, batch_norm=False, relu=False, bias=True)
        self.trunk = [self.Conv3d_1a_7x7, self.MaxPool3d_2a_3x3, self.Conv3d_2b_1x1,
                      self.Conv3d_2c_3x3, self.MaxPool3d_3a_3x3, self.Mixed_3b, self.Mixed_3c,
                      self.MaxPool3d_4a_3x3, self.Mixed_4b, self.Mixed_4c, self.Mixed_4d,
                      self.Mixed_4e, self.Mixed_4f, self.MaxPool3d_5a_2x2, self.Mixed_5b,
                      self.Mixed_5c]

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) in [-1, 1] -> pooled features (B, 1024), logits (B, num_classes)."""
        for layer in self.trunk:
            x = layer(x)                                       # -> (B, 1024, T', H', W')
        # The port's fixed 2x7x7 average pool, clipped to the feature map so that
        # clips smaller than the protocol (tests: 8 frames, 64 px) still run. At
        # 224x224 and >= 9 frames the clip changes nothing.
        kernel = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        pooled = F.avg_pool3d(x, kernel, stride=1)            # (B, 1024, t, h, w), 1x1x1 at 224
        logits = self.logits(pooled)                          # (B, classes, t, h, w)
        # Average over the remaining positions (time; space only off-protocol).
        return pooled.mean(dim=(2, 3, 4)), logits.mean(dim=(2, 3, 4))

    def forward(self, x):
        return self.features_and_logits(x)[1]


class TorchScriptI3D(nn.Module):
    """StyleGAN-V's `i3d_torchscript.pt` behind the same interface as InceptionI3d.

    It is called as model(x, rescale=..., resize=..., return_features=True) on
    (B, 3, T, H, W). We do the protocol's resize and [-1, 1] scaling ourselves
    (one code path for both formats), so rescale=False, resize=False; the
    "features" it returns are its 400-d pre-softmax logits. No pooled features:
    FID needs the state-dict format.
    """

    def __init__(self, scripted: nn.Module):
        super().__init__()
        self.scripted = scripted

    def features_and_logits(self, x):
        return None, self.scripted(x, rescale=False, resize=False, return_features=True)

    def forward(self, x):
        return self.features_and_logits(x)[1]


# ----------------------------------------------------------------------------------
# Loading the weights (never downloaded).
# ----------------------------------------------------------------------------------

def i3d_help() -> str:
    return (
        "FVD, FID and IS need the Kinetics-400 I3D network, and this project never "
        "downloads it. Get one of these files by hand:\n"
        "  * i3d_pretrained_400.pt  (PyTorch state dict, used by VideoGPT and TATS; "
        "VideoGPT's videogpt/download.py fetches it from Google Drive, id "
        "1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT), or\n"
        "  * i3d_torchscript.pt     (TorchScript, from StyleGAN-V's FVD code: "
        "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt; FVD and IS only).\n"
        f"Put it anywhere (for example ~/.cache/hvg/i3d_pretrained_400.pt) and pass "
        f"--i3d PATH or set {I3D_ENV}=PATH.")


def resolve_i3d_path(path: str | os.PathLike | None = None) -> Path:
    """--i3d PATH, else $HVG_I3D; a UserError that says what to get when neither works."""
    if path is None or str(path) == "":
        path = os.environ.get(I3D_ENV) or None
        if path is None:
            raise UserError(f"no I3D weights given (no --i3d, ${I3D_ENV} unset).\n" + i3d_help())
        source = f"${I3D_ENV}"
    else:
        source = "--i3d"
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"I3D weights not found: {source} points to {str(path)!r}, "
                        f"which is not a file.\n" + i3d_help())
    return path


def _is_torchscript(path: Path) -> bool:
    # Both torch.save and TorchScript write zip archives; only TorchScript has
    # a constants.pkl (and a code/ folder) inside.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _clean_state_dict(state: dict) -> dict:
    """Accept the plain port layout, a {'state_dict': ...} wrapper and DataParallel's
    'module.' prefix; return the plain layout."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_i3d(path: str | os.PathLike | None = None, device="cpu") -> nn.Module:
    """Load I3D from a state dict (port layout) or a TorchScript file, in eval mode.

    path None -> $HVG_I3D. The returned module maps (B, 3, T, 224, 224) in [-1, 1]
    to (B, 400) logits and has `features_and_logits(x)`. `model.i3d_format` and
    `model.i3d_path` say what was loaded (the CLI records them).
    """
    path = resolve_i3d_path(path)
    device = torch.device(device)
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # torch.jit is "deprecated"
            model = TorchScriptI3D(torch.jit.load(str(path), map_location=device))
        model.i3d_format = "torchscript"
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UserError(f"could not read I3D weights from {str(path)!r} "
                            f"({type(error).__name__}: {str(error)[:200]}). It should be "
                            "i3d_pretrained_400.pt (a state dict) or i3d_torchscript.pt.\n"
                            + i3d_help()) from None
        if not isinstance(state, dict) or "logits.conv3d.weight" not in _clean_state_dict(state):
            raise UserError(f"{str(path)!r} is not an I3D state dict in the InceptionI3d "
                            "layout (no 'logits.conv3d.weight' key).\n" + i3d_help())
        state = _clean_state_dict(state)
        model = InceptionI3d(num_classes=state["logits.conv3d.weight"].shape[0])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise UserError(f"{str(path)!r} does not match the InceptionI3d layout: "
                            f"{str(error)[:600]}") from None
        model.i3d_format = "state_dict"
    model.i3d_path = str(path)
    return model.to(device).eval().requires_grad_(False)


def file_sha256(path) -> str:
    """Identity of a weights file, so cached statistics never mix two networks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------
# Videos -> I3D inputs -> logits / features.
# ----------------------------------------------------------------------------------

def take_frames(videos: torch.Tensor, frames: int, what: str = "videos") -> torch.Tensor:
    """(..., T, H, W) -> (..., frames, H, W): the first `frames` frames.

    Clips shorter than the protocol are an error, not padded: FVD at different
    lengths measures different things.
    """
    if videos.shape[-3] < frames:
        raise UserError(f"{what} have {videos.shape[-3]} frames, but the protocol scores "
                        f"{frames}. Use --frames {videos.shape[-3]} (and the same for every "
                        "model you compare), or longer clips.")
    return videos[..., :frames, :, :]


def resize_frames(videos: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T, size, size): every frame resized on its own.

    Bilinear without antialiasing, as TF's resize_bilinear in the original FVD code.
    """
    b, c, t, h, w = videos.shape
    if (h, w) == (size, size):
        return videos
    frames = videos.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)     # (B*T, C, H, W)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    frames = F.interpolate(frames, size=(size, size), mode=mode, **kwargs)
    return frames.reshape(b, t, c, size, size).permute(0, 2, 1, 3, 4)   # (B, C, T, S, S)


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


@torch.no_grad()
def i3d_outputs(model, videos: torch.Tensor, protocol: Protocol | None = None,
                batch_size: int = 16) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(B, 3, T, H, W) in [-1, 1] -> (features (B, 1024) or None, logits (B, 400)) on CPU.

    Each batch is moved to the model's device, clamped to [-1, 1] and resized per
    frame to the protocol's size. Time is not cut here (see `take_frames`).
    """
    protocol = protocol or Protocol()
    device = _model_device(model)
    features, logits = [], []
    for start in range(0, videos.shape[0], batch_size):
        batch = videos[start:start + batch_size].to(device, torch.float32).clamp(-1, 1)
        batch = resize_frames(batch, protocol.resize, protocol.interpolation)
        feats, logs = model.features_and_logits(batch)
        logits.append(logs.float().cpu())
        if feats is not None:
            features.append(feats.float().cpu())
    features = torch.cat(features) if features else None
    return features, torch.cat(logits)


def i3d_logits(model, videos, protocol: Protocol | None = None, batch_size: int = 16):
    """(B, 3, T, H, W) in [-1, 1], any resolution -> (B, 400) logits (averaged over time)."""
    return i3d_outputs(model, videos, protocol, batch_size)[1]


def i3d_features(model, videos, protocol: Protocol | None = None, batch_size: int = 16):
    """(B, 3, T, H, W) in [-1, 1] -> (B, 1024) pooled I3D features (the FID input)."""
    features = i3d_outputs(model, videos, protocol, batch_size)[0]
    if features is None:
        raise UserError("this I3D is a TorchScript file, which gives logits only: FID "
                        "needs the pooled features of i3d_pretrained_400.pt (a state dict).")
    return features


# ----------------------------------------------------------------------------------
# The metrics themselves.
# ----------------------------------------------------------------------------------

def _float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_statistics(samples) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,), covariance (D, D) in float64 (unbiased, 1/(N-1), as TF-GAN)."""
    samples = _float64(samples)
    if samples.ndim != 2 or samples.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) samples, got shape {samples.shape}")
    return samples.mean(axis=0), np.cov(samples, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix: V diag(sqrt(w)) V^T."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    # Rounding makes zero eigenvalues come out as -1e-17: they are zero.
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2):

        d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1 S2)^{1/2} )

    (the squared distance, as FID/FVD report it). Computed in float64 without
    the non-symmetric square root of S1 S2, where the usual sqrtm picks up
    complex rounding noise: with A = S1^{1/2}, S1 S2 = A (A S2) has the same
    eigenvalues as (A S2) A = S1^{1/2} S2 S1^{1/2} =: M, which is symmetric and
    PSD, so tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M)). Numpy or torch inputs.
    """
    mu1, mu2, sigma1, sigma2 = map(_float64, (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; "
                         f"sigma {sigma1.shape}, {sigma2.shape}")
    sqrt_sigma1 = _sqrt_psd(sigma1)
    m = sqrt_sigma1 @ sigma2 @ sqrt_sigma1                       # S1^{1/2} S2 S1^{1/2}
    eigenvalues = np.linalg.eigvalsh((m + m.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()    # tr((S1 S2)^{1/2})
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    # For identical inputs rounding can leave -1e-12; a distance is never negative.
    return float(max(distance, 0.0))


def fid(real_features, fake_features) -> float:
    """Frechet distance between Gaussians fitted to (N, D) feature sets."""
    return frechet_distance(*gaussian_statistics(real_features), *gaussian_statistics(fake_features))


def fvd(real_videos, fake_videos, model, protocol: Protocol | None = None,
        batch_size: int = 16) -> float:
    """FVD between two sets of videos (N, 3, T, H, W) in [-1, 1]: the first
    protocol.frames frames of each, resized, I3D logits, Frechet distance.
    Use ~2048 clips per side for numbers comparable with papers."""
    protocol = protocol or Protocol()
    real = take_frames(real_videos, protocol.frames, "real videos")
    fake = take_frames(fake_videos, protocol.frames, "fake videos")
    return fid(i3d_logits(model, real, protocol, batch_size), i3d_logits(model, fake, protocol, batch_size))


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """IS = exp( E_x[ KL( p(y|x) || p(y) ) ] ), p(y) = E_x[p(y|x)], over `splits` splits.

    probs: (N, K) class probabilities (softmax of the logits). Returns (mean, std)
    over the splits. Between 1 (every clip gets the same prediction) and K
    (confident predictions spread evenly over all K classes).
    """
    probs = _float64(probs)
    splits = max(1, min(splits, probs.shape[0]))
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)                       # p(y), (1, K)
        # KL(p(y|x) || p(y)) = sum_y p(y|x) (log p(y|x) - log p(y)), with 0 log 0 = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
        scores.append(np.exp(terms.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------
# Quality without downloads: a classifier two-sample test and motion statistics.
# ----------------------------------------------------------------------------------
#
# FVD needs I3D weights that cannot always be had. The classifier two-sample test
# (C2ST; Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample Tests", ICLR 2017)
# needs none: it *trains* a judge on the spot. Given real clips P and generated
# clips Q, split each set in two halves, train a small 3-D CNN f to tell P from Q
# on the first halves, and measure its accuracy on the second halves:
#
#     train:  minimise  E_{x in P_a}[softplus(-f(x))] + E_{y in Q_a}[softplus(f(y))]
#             (binary cross-entropy, label 1 = real, 0 = generated)
#     score:  acc = ( #{x in P_b : f(x) > 0} + #{y in Q_b : f(y) <= 0} ) / (|P_b| + |Q_b|)
#
# Reading the number: if P = Q, no classifier can beat chance on clips it has not
# seen, so acc ~ 0.5 (Lopez-Paz & Oquab: under the null, acc ~ N(1/2, 1/(4 n_b))).
# The more the two differ in a way a small 3-D CNN can see (shapes, colours,
# sharpness, texture, motion), the closer acc gets to 1.0. Values below 0.5 are
# chance. It is a test *relative to the judge and the clip count*: report them with
# the number (the `C2STProtocol` below), and compare numbers computed under the same
# protocol only. We average over a few seeds (each seed draws its own split and
# initialisation) and report the spread over seeds beside the mean.
#
# Motion energy, the mean absolute frame difference
#
#     m(x) = mean_{c, t, i, j} | x[c, t+1, i, j] - x[c, t, i, j] |,
#
# catches the two classic video-GAN failures a per-frame judge misses: frozen or
# cross-faded motion (generated m far below real m) and flicker (far above). We
# report the ratio m(generated) / m(real) (1.0: as much motion as the data), and,
# over a long sample, m per quarter of the video: a generator that freezes past
# its training horizon has a last quarter much quieter than its first.


@dataclass(frozen=True)
class C2STProtocol:
    """Everything that changes a two-sample accuracy. The CLI has one flag per field
    (prefixed --c2st-)."""
    num_videos: int = _option(256, "real and generated clips each (half train, half test)", "[4, inf)")
    seeds: int = _option(3, "independent splits + initialisations, averaged", "[1, inf)")
    epochs: int = _option(12, "passes over the training halves (Adam, lr 3e-3, batches of 16)", "[1, inf)")
    width: int = _option(16, "channels of the judge's first layer (doubling twice)", "[1, inf)")
    max_frames: int = _option(32, "clips are cut to at most this many frames", "[2, inf)")
    # The judge reads 4x4-pixel patches: a multiple of 4.
    max_size: int = _option(64, "frames larger than this are area-averaged down to it", "[4, inf)")

    def key(self) -> dict:
        return dataclasses.asdict(self)


def quantize(videos: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] floats to the 256 levels a video file stores, so a generated set
    kept in memory and a real set read from disk (or vice versa) do not differ in a
    way the judge could pick up that has nothing to do with what the clips show."""
    return torch.round((videos.float().clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


PATCH = 4   # the judge reads 4x4-pixel patches


def common_shape(*shapes, max_frames: int = 32, max_size: int = 64) -> tuple[int, int]:
    """One (frames, size) for clip sets of shapes (..., T, H, W): the smallest of each,
    capped. Taking the smaller means never inventing detail or frames that one of
    the sets does not have; the caps keep the judge's cost fixed for large clips.
    The size is rounded down to a multiple of the judge's 4-pixel patches."""
    frames = min(min(s[-3] for s in shapes), max_frames)
    size = min(min(min(s[-2], s[-1]) for s in shapes), max_size)
    # The judge reads PATCH x PATCH patches: round down to a multiple (30 px -> 28 px).
    if size >= PATCH:
        size -= size % PATCH
    return frames, size


def to_shape(videos: torch.Tensor, frames: int, size: int) -> torch.Tensor:
    """(N, 3, T, H, W) -> (N, 3, frames, size, size): the first `frames` frames, a
    centre square, area-averaged down to `size` (area averaging is what data.down
    does; unlike bilinear it does not alias fine texture into noise)."""
    videos = videos[:, :, :frames]
    h, w = videos.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    videos = videos[..., top:top + side, left:left + side]
    if side == size:
        return videos
    n, c, t = videos.shape[:3]
    flat = videos.transpose(1, 2).reshape(n * t, c, side, side)          # (N*T, 3, s, s)
    flat = F.interpolate(flat, size=(size, size), mode="area")
    return flat.view(n, t, c, size, size).transpose(1, 2)                # (N, 3, T, S, S)


def judge_inputs(videos: torch.Tensor) -> torch.Tensor:
    """What the judge reads, computed once per clip set (not once per epoch):
    every frame next to its change to the next frame, cut into 4x4 patches.

        (N, 3, T, S, S) -> [x_t, x_{t+1} - x_t]          (N, 6, T-1, S, S)
                        -> patches of 4x4 pixels          (N, T-1, S/4, S/4, 6*4*4)

    The difference channels make motion one linear filter away: a judge that has
    to learn to subtract frames from 128 clips of each kind often fails to, and
    then calls a frozen video real.
    """
    n, c, t, s, _ = videos.shape
    if s % PATCH:
        raise ValueError(f"clip size {s} is not a multiple of the judge's patch {PATCH}")
    x = torch.cat([videos[:, :, :-1], videos[:, :, 1:] - videos[:, :, :-1]], dim=1)
    p = s // PATCH
    # (N, 6, T-1, p, 4, p, 4) -> (N, T-1, p, p, 6, 4, 4) -> (N, T-1, p, p, 96)
    x = x.view(n, 2 * c, t - 1, p, PATCH, p, PATCH).permute(0, 2, 3, 5, 1, 4, 6)
    return x.reshape(n, t - 1, p, p, 2 * c * PATCH * PATCH).contiguous()


class TwoSampleJudge(nn.Module):
    """The C2ST classifier: a small 3-D CNN over judge_inputs, -> one logit per clip.

        patches (N, T-1, S/4, S/4, 96)
        linear 96 -> w              -> LeakyReLU     (N, w,  T-1, S/4,  S/4)   (a 1x4x4 conv, stride 4)
        conv 2x2x2 stride 2         -> LeakyReLU     (N, 2w, T/2, S/8,  S/8)
        conv 2x2x2 stride 2         -> LeakyReLU     (N, 4w, T/4, S/16, S/16)
        mean and max over (T, H, W) -> linear        (N,)

    What a patch looks like (sharpness, texture, colour) and how it changes from
    one frame to the next (motion) are both in the first layer's input, at full
    frame rate and resolution. The pooled mean and max let a rare artefact (one
    seam, one smear) count as much as a common one. Small on purpose: it must train
    in seconds on a CPU, and a judge that memorises its 128 + 128 training clips
    would measure nothing on held-out ones.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        self.patch = nn.Linear(6 * PATCH * PATCH, width)
        self.merges = nn.ModuleList([nn.Conv3d(width, 2 * width, 2, stride=2),
                                     nn.Conv3d(2 * width, 4 * width, 2, stride=2)])
        self.head = nn.Linear(8 * width, 1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.patch(patches), 0.2).permute(0, 4, 1, 2, 3)   # (N, w, T-1, p, p)
        for merge in self.merges:
            # 2x2x2 blocks -> one position (stride 2): pad odd lengths by one (zeros).
            t, h, w = x.shape[2:]
            x = F.pad(x, (0, w % 2, 0, h % 2, 0, t % 2))
            x = F.leaky_relu(merge(x), 0.2)                                 # (N, 2C, T/2, H/2, W/2)
        features = x.flatten(2)                                            # (N, 4w, positions)
        pooled = torch.cat([features.mean(2), features.amax(2)], dim=1)    # (N, 8w)
        return self.head(pooled).squeeze(1)                                # (N,)


def two_sample_accuracy(real: torch.Tensor, fake: torch.Tensor, seed: int = 0,
                        epochs: int = 12, width: int = 16, batch_size: int = 16) -> float:
    """One C2ST: held-out accuracy of a judge trained on half of each set.

    real, fake: (N, 3, T, S, S) of one shape (see to_shape). Each seed fixes the
    split and the judge's initialisation and batch order, so the result is
    deterministic for a seed (on one machine and thread count).
    """
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"two_sample_accuracy: shapes differ {tuple(real.shape)} vs {tuple(fake.shape)}")
    return held_out_accuracy(judge_inputs(real), judge_inputs(fake), seed, epochs, width, batch_size)


def held_out_accuracy(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, epochs: int = 12,
                      width: int = 16, batch_size: int = 16) -> float:
    """two_sample_accuracy on judge_inputs already computed (c2st computes them once
    for all its seeds, not once per seed): (N, T-1, S/4, S/4, 96) each."""
    n = min(len(real), len(fake))
    if n < 4:
        raise UserError(f"a two-sample test needs at least 4 clips of each kind, got {n}")
    rng = np.random.default_rng(seed)
    real_order, fake_order = rng.permutation(len(real))[:n], rng.permutation(len(fake))[:n]
    half = n // 2
    # x: clips, y: 1 = real, 0 = generated. Train on the first halves, test on the rest.
    train_x = torch.cat([real[real_order[:half]], fake[fake_order[:half]]])
    train_y = torch.cat([torch.ones(half), torch.zeros(half)])
    test_x = torch.cat([real[real_order[half:]], fake[fake_order[half:]]])
    test_y = torch.cat([torch.ones(n - half), torch.zeros(n - half)])

    torch_rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        judge = TwoSampleJudge(width)
    optimizer = torch.optim.Adam(judge.parameters(), lr=3e-3)
    judge.train()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(train_x), generator=torch_rng)
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                logits = judge(train_x[index])
                loss = F.binary_cross_entropy_with_logits(logits, train_y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    judge.eval()
    with torch.no_grad():
        logits = torch.cat([judge(test_x[s:s + 64]) for s in range(0, len(test_x), 64)])
    return float(((logits > 0).float() == test_y).float().mean())


def c2st(real: torch.Tensor, fake: torch.Tensor, protocol: C2STProtocol | None = None) -> dict:
    """The classifier two-sample test, averaged over protocol.seeds seeds.

    real, fake: (N, 3, T, H, W) in [-1, 1], any shapes: both are brought to
    common_shape (the smaller frames and size, capped) with to_shape and quantised
    to 8 bits. -> {"c2st": mean held-out accuracy, "c2st_std": its std over seeds,
    "c2st_seeds": [each seed's], "shape": [frames, size, size], "clips": n}.
    """
    protocol = protocol or C2STProtocol()
    real, fake = real[:protocol.num_videos], fake[:protocol.num_videos]
    frames, size = common_shape(real.shape, fake.shape, max_frames=protocol.max_frames,
                                max_size=protocol.max_size)
    if frames < 2 or size < PATCH:
        raise UserError(f"clips of {frames} frame(s) at {size}x{size} are too small for the two-sample "
                        f"test: it needs at least 2 frames (it reads motion) and {PATCH}x{PATCH} pixels")
    # 8-bit clips at the common shape, cut into the judge's inputs once for all seeds.
    real = judge_inputs(quantize(to_shape(real, frames, size)))
    fake = judge_inputs(quantize(to_shape(fake, frames, size)))
    accuracies = [held_out_accuracy(real, fake, seed, protocol.epochs, protocol.width)
                  for seed in range(protocol.seeds)]
    return {"c2st": float(np.mean(accuracies)), "c2st_std": float(np.std(accuracies)),
            "c2st_seeds": accuracies, "shape": [frames, size, size],
            "clips": min(len(real), len(fake))}


def frame_differences(videos: torch.Tensor) -> torch.Tensor:
    """|x_{t+1} - x_t|: (N, 3, T, H, W) -> (N, 3, T-1, H, W)."""
    if videos.shape[2] < 2:
        raise ValueError("motion energy needs clips of at least 2 frames")
    return (videos[:, :, 1:].float() - videos[:, :, :-1].float()).abs()


def motion_energy(videos: torch.Tensor) -> float:
    """m(x) = mean |x_{t+1} - x_t| over clips, channels, frames and pixels. (N, 3, T, H, W)."""
    return float(frame_differences(videos).mean())


def motion_by_segment(videos: torch.Tensor, segments: int = 4) -> list[float]:
    """Motion energy of each of `segments` consecutive parts of the clips (by frame
    difference), e.g. quarters of a 4x-horizon sample: freezing shows as a fall."""
    differences = frame_differences(videos)                                      # (N, 3, T-1, H, W)
    if differences.shape[2] < segments:
        raise ValueError(f"{videos.shape[2]} frames cannot be split into {segments} segments")
    return [float(part.mean()) for part in differences.tensor_split(segments, dim=2)]


def motion_statistics(real: torch.Tensor, fake: torch.Tensor) -> dict:
    """Motion energy of both sets and their ratio (generated over real), measured at
    the shape the two-sample test uses, so both are at one frame rate and size."""
    frames, size = common_shape(real.shape, fake.shape, max_frames=10**9, max_size=10**9)
    real_m = motion_energy(to_shape(real, frames, size))
    fake_m = motion_energy(to_shape(fake, frames, size))
    return {"motion_real": real_m, "motion_fake": fake_m,
            "motion_ratio": fake_m / max(real_m, 1e-12)}


def quality(real: torch.Tensor, fake: torch.Tensor, protocol: C2STProtocol | None = None) -> dict:
    """The download-free numbers of one comparison: C2ST and motion statistics."""
    return {**c2st(real, fake, protocol), **motion_statistics(real, fake)}


# ----------------------------------------------------------------------------------
# Statistics of a whole set of clips (what gets cached), and comparing two sets.
# ----------------------------------------------------------------------------------

@dataclass
class VideoStatistics:
    """Everything the metrics need from one set of clips."""
    num_videos: int
    logits_mu: np.ndarray             # (400,)
    logits_sigma: np.ndarray          # (400, 400)
    features_mu: np.ndarray | None    # (1024,) (None for a TorchScript I3D)
    features_sigma: np.ndarray | None
    inception_score: float
    inception_score_std: float

    def save(self, path, info: dict | None = None) -> None:
        """.npz (no pickle); `info` (the cache key) is stored as JSON text for humans."""
        arrays = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        arrays["info"] = np.array(json.dumps(info or {}, sort_keys=True))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)       # atomic: a killed run leaves no half-written cache

    @classmethod
    def load(cls, path) -> "VideoStatistics":
        with np.load(path, allow_pickle=False) as data:
            values = {f.name: (data[f.name] if f.name in data else None)
                      for f in dataclasses.fields(cls)}
        values["num_videos"] = int(values["num_videos"])
        values["inception_score"] = float(values["inception_score"])
        values["inception_score_std"] = float(values["inception_score_std"])
        return cls(**values)


def video_batches(source, batch_size: int = 16) -> Iterator[torch.Tensor]:
    """Anything that holds videos -> batches (B, 3, T, H, W).

    source: a tensor (N, 3, T, H, W) (or one video (3, T, H, W)), or an iterable of
    batches: tensors, (video, label) tuples from a DataLoader over data.make_dataset,
    or dicts with "video" or "target" (a LevelDataset batch; note its target is a
    partial-view crop at levels >= 2, not the whole clip).
    """
    if isinstance(source, torch.Tensor):
        source = source.unsqueeze(0) if source.dim() == 4 else source
        for start in range(0, source.shape[0], batch_size):
            yield source[start:start + batch_size]
        return
    for item in source:
        if isinstance(item, dict):
            item = item["video"] if "video" in item else item["target"]
        elif isinstance(item, (tuple, list)):
            item = item[0]
        yield item.unsqueeze(0) if item.dim() == 4 else item


def compute_statistics(model, source, protocol: Protocol | None = None, batch_size: int = 16,
                       progress: str | None = None) -> VideoStatistics:
    """Run I3D over up to protocol.num_videos clips of `source` and fit the Gaussians.

    `progress` is a tqdm label (None: no bar). Clips are cut to protocol.frames.
    """
    protocol = protocol or Protocol()
    features, logits, count = [], [], 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=protocol.num_videos, desc=progress, unit="clip", file=sys.stderr)
    for batch in video_batches(source, batch_size):
        batch = take_frames(batch[:protocol.num_videos - count], protocol.frames, progress or "videos")
        feats, logs = i3d_outputs(model, batch, protocol, batch_size)
        logits.append(logs)
        if feats is not None:
            features.append(feats)
        count += batch.shape[0]
        if bar is not None:
            bar.update(batch.shape[0])
        if count >= protocol.num_videos:
            break
    if bar is not None:
        bar.close()
    if count < 2:
        raise UserError(f"{progress or 'the video set'} gave {count} clip(s), but a mean and "
                        f"covariance need at least 2 (the protocol asks for "
                        f"{protocol.num_videos}): give more videos.")
    logits = torch.cat(logits)                                          # (N, 400)
    probs = torch.softmax(logits.double(), dim=1)                      # p(y|x)
    is_mean, is_std = inception_score(probs, protocol.is_splits)
    features_mu = features_sigma = None
    if features:
        features_mu, features_sigma = gaussian_statistics(torch.cat(features))
    return VideoStatistics(count, *gaussian_statistics(logits), features_mu, features_sigma,
                           is_mean, is_std)


def compare(real: VideoStatistics, fake: VideoStatistics) -> dict:
    """FVD (logits), FID (pooled features, when there are any) and the fake set's IS."""
    result = {"fvd": frechet_distance(real.logits_mu, real.logits_sigma,
                                      fake.logits_mu, fake.logits_sigma)}
    result["fid"] = None
    if real.features_mu is not None and fake.features_mu is not None:
        result["fid"] = frechet_distance(real.features_mu, real.features_sigma,
                                         fake.features_mu, fake.features_sigma)
    result.update({"is": fake.inception_score, "is_std": fake.inception_score_std,
                   "num_real": real.num_videos, "num_fake": fake.num_videos})
    return result


class FVDEvaluator:
    """FVD during training: real statistics once, then one call per evaluation.

        evaluator = FVDEvaluator(args.i3d, real_videos_or_loader, num_videos=256, device=device)
        metrics = evaluator(fake_videos)      # {"fvd", "fid", "is", "is_std", "num_real", "num_fake"}

    `i3d` is a path (or None for $HVG_I3D) or an already loaded model; `real` and
    `fake` are anything `video_batches` accepts. The level scripts use
    `for_training` and `evaluate_generator` (below). Few clips give a biased,
    noisy FVD: good for following one run, not for comparing with papers.
    """

    def __init__(self, i3d, real, num_videos: int | None = None, device="cpu",
                 protocol: Protocol | None = None, batch_size: int = 16, progress: bool = False,
                 seed: int = 0):
        protocol = protocol or Protocol()
        if num_videos is not None:
            protocol = dataclasses.replace(protocol, num_videos=num_videos)
        self.protocol, self.batch_size, self.progress, self.seed = protocol, batch_size, progress, seed
        self.model = i3d if isinstance(i3d, nn.Module) else load_i3d(i3d, device=device)
        self.real = compute_statistics(self.model, real, protocol, batch_size,
                                       "real clips" if progress else None)
        self.dataset = self.indices = None

    def __call__(self, fake) -> dict:
        stats = compute_statistics(self.model, fake, self.protocol, self.batch_size,
                                   "fake clips" if self.progress else None)
        return compare(self.real, stats)

    @classmethod
    def for_training(cls, i3d, dataset, num_videos: int, device="cpu",
                     protocol: Protocol | None = None, batch_size: int = 16, seed: int = 0,
                     real: torch.Tensor | None = None):
        """The evaluator of a level script (`--eval-every N --i3d PATH`).

        dataset: the level's base dataset, items (whole clip (3, T_l, H_l, W_l), label).
        A seeded subset of num_videos clips is the real set. It also gives the fakes
        their labels (class-conditional levels) and, for an upsampling level, their
        conditions down(x): such a level is scored on what it makes of real
        level-(l-1) videos. Clips are scored at min(16, T_l) frames (tiny level 1
        has 8); the rest is the standard protocol.
        """
        frames = dataset[0][0].shape[1]
        protocol = protocol or Protocol(frames=min(Protocol().frames, frames))
        protocol = dataclasses.replace(protocol, num_videos=num_videos)
        count = min(len(dataset), protocol.num_videos)
        indices = np.sort(np.random.default_rng(seed).choice(len(dataset), count, replace=False))
        if real is None:       # (TrainingEvaluator passes the same subset, already loaded)
            real = (videos for videos, _ in _dataset_batches(dataset, indices, batch_size))
        evaluator = cls(i3d, real, device=device, protocol=protocol, batch_size=batch_size, seed=seed)
        evaluator.dataset, evaluator.indices = dataset, indices
        return evaluator

    def generated_batches(self, generator) -> Iterator[torch.Tensor]:
        """Videos from a level's generator for the real subset: see `generated_batches`."""
        if self.dataset is None:
            raise ValueError("generated_batches needs an evaluator made by for_training")
        return generated_batches(generator, self.dataset, self.indices, self.batch_size, self.seed)

    def evaluate_generator(self, generator, out=None, step=None, save=None) -> dict:
        """Score `generator` (see generated_batches) -> {"fvd", "fid", "is", "is_std"}
        for the log line; with `out` and `save`, keep_best by FVD."""
        result = compare(self.real, compute_statistics(
            self.model, self.generated_batches(generator), self.protocol, self.batch_size))
        record = {key: result[key] for key in ("fvd", "fid", "is", "is_std")}
        if out is not None and save is not None:
            record["fvd_best"] = keep_best(out, step, save, "fvd", result["fvd"],
                                           {"protocol": self.protocol.key()})
        return record


@torch.no_grad()
def generated_batches(generator, dataset, indices, batch_size: int = 16,
                      seed: int = 0) -> Iterator[torch.Tensor]:
    """Videos from a level's generator, one batch per batch of real clips dataset[indices].

    Level 1 (no `time_factor`): G(z, labels). Upsampling level: G(pad(down(x), R), z,
    labels, context=R) over each whole real clip x, R = its temporal receptive field
    (with context >= R this is what windowed sampling gives too): the level is
    scored on what it makes of real level-(l-1) videos. The noise is seeded: every
    evaluation scores the same z, so the curve over training follows G only.
    """
    noise = torch.Generator().manual_seed(seed)
    time_factor = getattr(generator, "time_factor", None)
    device = next(generator.parameters()).device
    for videos, labels in _dataset_batches(dataset, indices, batch_size):
        z = generator.sample_latent(videos.shape[0], generator=noise)
        labels = labels.to(device) if generator.num_classes else None
        if time_factor is None:
            yield generator(z, labels).float().cpu()
        else:
            context = generator.temporal_receptive_field()
            condition = down(videos, time_factor, generator.space_factor)   # (B, 3, t, h, w)
            padded = pad_condition(condition, context).to(device)           # (B, 3, t + 2R, h, w)
            yield generator(padded, z, labels, context=context).float().cpu()


def keep_best(out, step: int, save, metric: str, value: float, info: dict | None = None) -> float:
    """Keep out/ckpt_best.pt for the lowest `metric` seen so far (FVD, or the
    two-sample accuracy): when `value` beats out/ckpt_best.json's, save(step) writes
    out/ckpt.pt, which is copied to out/ckpt_best.pt, and ckpt_best.json records the
    step and value (so a resumed run still knows the best). Returns the best value."""
    out = Path(out)
    best_file = out / "ckpt_best.json"
    best = math.inf
    if best_file.is_file():
        best = json.loads(best_file.read_text()).get(metric, math.inf)
    if value < best:
        save(step)
        tmp = out / "ckpt_best.pt.tmp"
        shutil.copyfile(out / "ckpt.pt", tmp)
        os.replace(tmp, out / "ckpt_best.pt")       # atomic: never half a best checkpoint
        best_file.write_text(json.dumps({"step": step, metric: value, **(info or {})}) + "\n")
    return min(best, value)


class TrainingEvaluator:
    """What `--eval-every N` scores during training, on rank 0, with no download:

        evaluator = TrainingEvaluator(base_dataset, num_videos=128, device=device, i3d=cfg.i3d)
        record = evaluator.evaluate_generator(ema_generator, out, step, save)
        # {"c2st", "c2st_std", "motion_ratio"} (+ "fvd", "fid", "is", "is_std" with I3D)

    The real set is a seeded subset of the level's base dataset (whole clips at
    the level's shape), loaded once. The generated set is the level's EMA generator
    on the same seeded noise every time (upsampling levels: on down() of those real
    clips, see generated_batches). The number it keeps ckpt_best.pt by is the FVD
    when I3D weights are given (--i3d or $HVG_I3D), else the two-sample accuracy of
    a one-seed C2ST: lower is better for both. Why a C2ST and not a Frechet distance
    on some features: it needs no network trained beforehand, it reads on a fixed
    scale (0.5 = the judge cannot tell), and the same test fills the README's
    per-level table, so the number in log.jsonl means what the table means. Its
    cost is a few seconds at level 1 and some tens of seconds at 32x64x64 on a CPU
    (the README's table gives the measured times).
    """

    def __init__(self, dataset, num_videos: int, device="cpu", i3d=None, seed: int = 0,
                 protocol: C2STProtocol | None = None, batch_size: int = 16):
        count = min(len(dataset), num_videos)
        if count < 4:
            raise UserError(f"--eval-videos {num_videos}: the two-sample test needs at least 4 clips")
        self.dataset, self.seed, self.batch_size = dataset, seed, batch_size
        self.indices = np.sort(np.random.default_rng(seed).choice(len(dataset), count, replace=False))
        self.real = torch.cat([videos for videos, _ in _dataset_batches(dataset, self.indices, batch_size)])
        self.protocol = protocol or C2STProtocol(num_videos=count, seeds=1)
        self.fvd = None
        if i3d is not None or os.environ.get(I3D_ENV):
            self.fvd = FVDEvaluator.for_training(i3d, dataset, count, device, seed=seed, real=self.real)
        self.metric = "fvd" if self.fvd is not None else "c2st"

    def evaluate_generator(self, generator, out=None, step=None, save=None) -> dict:
        fake = torch.cat(list(generated_batches(generator, self.dataset, self.indices,
                                                self.batch_size, self.seed)))
        scores = quality(self.real, fake, self.protocol)
        record = {key: scores[key] for key in ("c2st", "c2st_std", "motion_ratio")}
        if self.fvd is not None:
            result = compare(self.fvd.real, compute_statistics(
                self.fvd.model, fake, self.fvd.protocol, self.batch_size))
            record.update({key: result[key] for key in ("fvd", "fid", "is", "is_std")})
        if out is not None and save is not None:
            protocol = self.fvd.protocol if self.fvd is not None else self.protocol   # of the kept metric
            record[f"{self.metric}_best"] = keep_best(out, step, save, self.metric, record[self.metric],
                                                      {"protocol": protocol.key()})
        return record


def _dataset_batches(dataset, indices, batch_size):
    """Items (video, label) of `dataset` at `indices` -> batches (videos (B, 3, T, H, W), labels (B,))."""
    for start in range(0, len(indices), batch_size):
        items = [dataset[int(i)] for i in indices[start:start + batch_size]]
        yield torch.stack([video for video, _ in items]), torch.tensor([int(label) for _, label in items])


# ----------------------------------------------------------------------------------
# Real clips held out from training (what evaluate.py compares each level with).
# ----------------------------------------------------------------------------------

EVAL_DATA_SEED = 10_000   # real clips for evaluation: a dataset seed that training (--seed 0..) does not use


def real_clips(data_name: str, data_root, preset: str, level: int, num: int, seed: int = 0):
    """`num` real clips at `level`'s full shape: (num, 3, T_l, H_l, W_l) and labels (num,).

    Synthetic data: items 0..num-1 of the dataset seeded EVAL_DATA_SEED + seed,
    clips that training never drew. Video datasets: a seeded subset."""
    dataset = make_dataset(data_name, data_root, preset, level, seed=EVAL_DATA_SEED + seed)
    count = min(len(dataset), num)
    if data_name == "synthetic":
        indices = np.arange(count)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(len(dataset), count, replace=False))
    videos, labels = zip(*_dataset_batches(dataset, indices, 32))
    return torch.cat(videos), torch.cat(labels)


# ----------------------------------------------------------------------------------
# Video files (a folder of real or generated clips).
# ----------------------------------------------------------------------------------

class VideoFiles(torch.utils.data.Dataset):
    """Every video file under a folder, as it is (not at a preset's shape):
    (3, frames, size, size) floats in [-1, 1], the first `frames` frames of each.

    Non-square frames are centre-cropped to a square first (a direct resize would
    squash them), then resized with the protocol's interpolation, here per clip so
    that files of different sizes batch together.
    """

    def __init__(self, folder, protocol: Protocol):
        self.folder, self.protocol = Path(folder), protocol
        self.files = find_videos(self.folder)
        if not self.files:
            raise UserError(f"no video files (.mp4 .avi .mov .mkv .webm .gif) under "
                            f"{str(folder)!r}: point it at a folder of clips")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path = self.files[index]
        try:
            frames = read_frames(path, 0, self.protocol.frames, 1)     # uint8 (T, H, W, 3)
        except EOFError:
            raise UserError(f"{path} has fewer than {self.protocol.frames} frames, the "
                            "protocol's clip length; pass a smaller --frames (the same for "
                            "every model you compare) or remove the file") from None
        except Exception as error:
            raise UserError(f"could not decode {path}: {type(error).__name__}: {error}") from None
        video = torch.from_numpy(np.array(frames)).permute(3, 0, 1, 2).float()  # (3, T, H, W)
        video = video / 127.5 - 1                                               # [0, 255] -> [-1, 1]
        h, w = video.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        video = video[:, :, top:top + side, left:left + side]                   # (3, T, side, side)
        if self.protocol.resize:      # 0: keep the file's size (the two-sample test resizes itself)
            video = resize_frames(video[None], self.protocol.resize, self.protocol.interpolation)[0]
        return video, 0

    def fingerprint(self) -> str:
        """Changes when a file is added, removed or rewritten (for the cache key)."""
        digest = hashlib.sha256()
        for path in self.files:
            stat = path.stat()
            digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


# ----------------------------------------------------------------------------------
# The command line. evaluate.py builds its own from the same pieces
# (add_real_arguments, add_protocol_arguments, add_common_arguments, protocols,
# real_source, fvd_scores), so both scripts take the same flags for the same things.
# ----------------------------------------------------------------------------------

def add_real_arguments(parser, chain: bool = False) -> None:
    """--real, --real-root, --preset, --level: which real clips. `chain`: the script
    samples a trained chain (evaluate.py), whose preset is the default."""
    real = parser.add_argument_group("real videos")
    real.add_argument("--real", required=True,
                      help="a dataset of data.py (synthetic, kinetics600, bdd100k, ucf101, folder, "
                           "cache)" + ("" if chain else " or a folder of video files"))
    real.add_argument("--real-root", default=None, help="the dataset's root folder (data.py's --data-root)")
    real.add_argument("--preset", default=None,
                      help="data.py shape preset of the real clips (default: "
                           + ("the chain's, else " if chain else "") + "--real if it names a preset, "
                           "else tiny)")
    real.add_argument("--level", type=flags.ranged("--level", int, "[1, inf)"), default=None,
                      help=flags.ranged_help(("evaluate the chain's levels 1..LEVEL only "
                                              "(default: all)") if chain else
                                             "level whose clip shape the real clips take "
                                             "(default: the last)", "[1, inf)"))


def add_protocol_arguments(parser) -> None:
    """One flag per field of C2STProtocol (--c2st-*) and of Protocol (FVD), with its range."""
    c2st_group = parser.add_argument_group("two-sample test protocol (changes the accuracies)")
    protocol = parser.add_argument_group("FVD protocol (changes the scores; with --i3d only)")
    for group, prefix, fields in ((c2st_group, "--c2st-", dataclasses.fields(C2STProtocol)),
                                  (protocol, "--", dataclasses.fields(Protocol))):
        for f in fields:
            flag, interval = prefix + f.name.replace("_", "-"), f.metadata["range"]
            if interval is None:
                group.add_argument(flag, default=f.default, help=f.metadata["help"])
            else:
                group.add_argument(flag, type=flags.ranged(flag, type(f.default), interval, f.metadata["help"]),
                                   default=f.default, help=flags.ranged_help(f.metadata["help"], interval))


def add_common_arguments(parser, out: str) -> None:
    """--i3d, --batch-size, --device, --seed, --workers, the statistics cache and --out."""
    parser.add_argument("--i3d", default=None,
                        help=f"I3D weights file for FVD/FID/IS (default: ${I3D_ENV}; without "
                             "either, only the download-free numbers)")
    parser.add_argument("--batch-size", type=flags.ranged("--batch-size", int, "[1, inf)"), default=16,
                        help=flags.ranged_help("clips per I3D forward pass", "[1, inf)"))
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=flags.ranged("--seed", int, "[0, 2**31)"), default=0,
                        help=flags.ranged_help("which real clips / which samples", "[0, 2**31)"))
    parser.add_argument("--workers", type=flags.ranged("--workers", int, "[0, inf)"), default=0,
                        help=flags.ranged_help("DataLoader workers for decoding", "[0, inf)",
                                               "decode in the main process"))
    parser.add_argument("--stats-dir", default=None,
                        help="where real statistics are cached (default: $XDG_CACHE_HOME/hvg "
                             "or ~/.cache/hvg)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the real statistics")
    parser.add_argument("--out", default=out, help="JSON file for the results")


def protocols(args) -> tuple[Protocol, C2STProtocol]:
    """The FVD and the two-sample protocols the flags ask for."""
    protocol = Protocol(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Protocol)})
    c2st_protocol = C2STProtocol(**{f.name: getattr(args, "c2st_" + f.name)
                                    for f in dataclasses.fields(C2STProtocol)})
    return protocol, c2st_protocol


def build_parser() -> argparse.ArgumentParser:
    parser = flags.ArgumentParser(
        description="Quality of a folder of generated videos against real ones: the download-free "
                    "two-sample test and motion statistics; FVD, FID and IS too when I3D weights "
                    "are given. (A trained hierarchy, level by level: evaluate.py.)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_real_arguments(parser)
    parser.add_argument_group("generated videos").add_argument(
        "--fake", required=True, help="a folder of generated video files (sample.py --out writes "
                                      "one; to sample from run folders, use evaluate.py --runs)")
    add_protocol_arguments(parser)
    add_common_arguments(parser, out="metrics.json")
    return parser


def _loader(dataset, count, args, rng=None):
    """Batches of `count` items of `dataset`: the first ones, or a seeded random subset
    (a dataset sorted by class would otherwise give its first few classes only)."""
    indices = range(count) if rng is None else np.sort(rng.choice(len(dataset), count, replace=False))
    subset = torch.utils.data.Subset(dataset, [int(i) for i in indices])
    return torch.utils.data.DataLoader(subset, batch_size=args.batch_size, shuffle=False,
                                       num_workers=args.workers)


def real_source(args, protocol: Protocol, chain_preset=None, chain_levels=None):
    """The real clips as (batches, spec). spec is a JSON-able description which, with
    the protocol and the I3D file, keys the statistics cache. `chain_preset` and
    `chain_levels`: the preset and number of levels of the samples compared with
    (evaluate.py), the default shape of the real clips."""
    if Path(args.real).is_dir():
        files = VideoFiles(args.real, protocol)
        spec = {"kind": "video-files", "path": str(Path(args.real).resolve()),
                "files": len(files), "fingerprint": files.fingerprint()}
        return _loader(files, min(len(files), protocol.num_videos), args), spec
    preset = args.preset or chain_preset or (args.real if args.real in PRESETS else "tiny")
    level = args.level or (chain_levels if preset == chain_preset else None) or num_levels(preset)
    dataset = make_dataset(args.real, args.real_root, preset, level, seed=args.seed)
    count = min(len(dataset), protocol.num_videos)
    spec = {"kind": "dataset", "data": args.real,
            "root": str(Path(args.real_root).resolve()) if args.real_root else None,
            "preset": preset, "level": level, "seed": args.seed, "size": len(dataset)}
    return _loader(dataset, count, args, np.random.default_rng(args.seed)), spec


def fake_source(args, protocol: Protocol):
    """The generated clips of `--fake FOLDER` as (batches, spec)."""
    files = VideoFiles(args.fake, protocol)
    spec = {"kind": "video-files", "path": str(Path(args.fake).resolve()), "files": len(files)}
    return _loader(files, min(len(files), protocol.num_videos), args), spec


def stats_dir(args) -> Path:
    if args.stats_dir:
        return Path(args.stats_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hvg"


def cached_real_statistics(model, args, protocol: Protocol, chain_preset=None,
                           chain_levels=None) -> tuple[VideoStatistics, dict]:
    """Real statistics from the cache file keyed by (real spec, protocol, I3D file),
    computed and saved on a miss. The second evaluation against the same data is fast."""
    batches, spec = real_source(args, protocol, chain_preset, chain_levels)
    key = {"real": spec, "protocol": protocol.key(), "i3d_sha256": file_sha256(model.i3d_path),
           "cache_version": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec.get("path") or spec["data"]).name)
    path = stats_dir(args) / f"fvd-{name}-{protocol.frames}f-{protocol.resize}px-{digest}.npz"
    if path.is_file() and not args.no_cache:
        print(f"real statistics: cached in {path}")
        return VideoStatistics.load(path), spec
    stats = compute_statistics(model, batches, protocol, args.batch_size, "real clips")
    stats.save(path, key)
    print(f"real statistics: {stats.num_videos} clips, saved to {path}")
    return stats, spec


def collect_clips(args, protocol: Protocol, c2st_protocol: C2STProtocol):
    """The real and generated clips of `--real` and `--fake FOLDER`, in memory for the
    two-sample test: -> (real (N, 3, T, S, S), fake (M, 3, T, S, S), real spec, fake spec).

    How two sets of different shapes become one: video files are centre-cropped to
    a square and read for their first --frames frames (16 by default), at their own
    size; data.py clips are taken whole. Then both sets are cut to the shorter
    length and area-averaged to the smaller size (capped by --c2st-max-frames and
    --c2st-max-size), and rounded to 8 bits (see `c2st`).
    """
    count = c2st_protocol.num_videos
    native = dataclasses.replace(protocol, resize=0, num_videos=count)

    def from_files(folder):
        files = VideoFiles(folder, native)
        return [files[i][0] for i in range(min(len(files), count))]

    if Path(args.real).is_dir():
        real = from_files(args.real)
        real_spec = {"kind": "video-files", "path": str(Path(args.real).resolve()), "files": len(real)}
    else:
        batches, real_spec = real_source(args, native)
        real = [video for videos, _ in batches for video in videos]
    fake = from_files(args.fake)
    fake_spec = {"kind": "video-files", "path": str(Path(args.fake).resolve()), "files": len(fake)}
    frames, size = common_shape(*(v.shape for v in real + fake), max_frames=c2st_protocol.max_frames,
                                max_size=c2st_protocol.max_size)
    real = torch.cat([to_shape(v[None], frames, size) for v in real])
    fake = torch.cat([to_shape(v[None], frames, size) for v in fake])
    return real, fake, real_spec, fake_spec


def fvd_scores(args, protocol: Protocol, device, fake=None) -> dict:
    """FVD, FID and IS with the I3D network (needs the weights). `fake`: the generated
    clips as (batches, spec); default the --fake folder (evaluate.py passes samples)."""
    model = load_i3d(args.i3d, device=device)
    print(f"I3D: {model.i3d_path} ({model.i3d_format}) on {device}; {protocol}")
    fake_batches, fake_spec = fake or fake_source(args, protocol)
    real, _ = cached_real_statistics(model, args, protocol, fake_spec.get("preset"), fake_spec.get("levels"))
    fake = compute_statistics(model, fake_batches, protocol, args.batch_size, "fake clips")
    result = compare(real, fake)
    result.update({"real_is": real.inception_score, "real_is_std": real.inception_score_std,
                   "protocol": protocol.key(),
                   "i3d": {"path": model.i3d_path, "format": model.i3d_format}})
    fid_text = "n/a (TorchScript I3D)" if result["fid"] is None else f"{result['fid']:.2f}"
    print(f"FVD {result['fvd']:.2f} | FID {fid_text} | IS {result['is']:.2f} +- "
          f"{result['is_std']:.2f} (real clips: {result['real_is']:.2f}) | {result['num_fake']} "
          f"fake vs {result['num_real']} real clips of {protocol.frames} frames")
    for side in ("real", "fake"):
        if result[f"num_{side}"] < protocol.num_videos:
            print(f"note: only {result[f'num_{side}']} {side} clips (protocol: "
                  f"{protocol.num_videos}); FVD from fewer clips is biased upwards and not "
                  "comparable with published numbers.")
    return result


def write_json(path, result: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    protocol, c2st_protocol = protocols(args)
    device = resolve_device(args.device)
    real, fake, real_spec, fake_spec = collect_clips(args, protocol, c2st_protocol)
    result = quality(real, fake, c2st_protocol)
    result.update({"num_real": len(real), "num_fake": len(fake), "real": real_spec,
                   "fake": fake_spec, "c2st_protocol": c2st_protocol.key()})
    print(f"two-sample accuracy {result['c2st']:.3f} +- {result['c2st_std']:.3f} "
          f"({c2st_protocol.seeds} seeds; 0.5: the judge cannot tell them apart, 1.0: always can) "
          f"| motion ratio {result['motion_ratio']:.2f} (generated / real) | "
          f"{len(fake)} generated vs {len(real)} real clips at {'x'.join(map(str, result['shape']))}")
    if args.i3d or os.environ.get(I3D_ENV):
        result.update(fvd_scores(args, protocol, device))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    flags.run_main(main)
