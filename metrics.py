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
    # fake videos from a folder or sampled from trained runs (needs sample.py):
    python metrics.py --real synthetic --preset tiny --fake samples/ --i3d i3d_pretrained_400.pt
    python metrics.py --real synthetic --runs runs/tiny --num-videos 256    # $HVG_I3D set
    python metrics.py --real kinetics600 --real-root /data/k600 --runs runs/kinetics600 \\
        --i3d ~/.cache/hvg/i3d_pretrained_400.pt --device cuda --out metrics.json

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

from data import UserError, down, find_videos, pad_condition, read_frames

I3D_ENV = "HVG_I3D"


# ----------------------------------------------------------------------------------
# The protocol: everything that changes the numbers, in one place.
# ----------------------------------------------------------------------------------

def _option(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Protocol:
    """How clips are turned into I3D inputs. The defaults are the common FVD protocol
    (Unterthiner et al., as used by VideoGPT, TATS and StyleGAN-V): every field changes
    the score, so a result is only comparable with results computed under the same
    protocol. The CLI has one flag per field."""
    num_videos: int = _option(2048, "real and generated clips each; fewer clips bias FVD upwards")
    frames: int = _option(16, "the first `frames` frames of every clip are scored")
    resize: int = _option(224, "every frame is resized to resize x resize (I3D's input size)")
    interpolation: str = _option("bilinear", "torch interpolate mode for the resize")
    is_splits: int = _option(10, "IS is averaged over this many splits (mean, std)")

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
                     protocol: Protocol | None = None, batch_size: int = 16, seed: int = 0):
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
        real = (videos for videos, _ in _dataset_batches(dataset, indices, batch_size))
        evaluator = cls(i3d, real, device=device, protocol=protocol, batch_size=batch_size, seed=seed)
        evaluator.dataset, evaluator.indices = dataset, indices
        return evaluator

    @torch.no_grad()
    def generated_batches(self, generator) -> Iterator[torch.Tensor]:
        """Videos from a level's generator, one batch per batch of the real subset.

        Level 1 (no `time_factor`): G(z, labels). Upsampling level: G(pad(down(x), R), z,
        labels, context=R) over each whole real clip x, R = its temporal receptive field
        (with context >= R this is what windowed sampling gives too). The noise is
        seeded: every evaluation scores the same z, so the FVD curve follows G only.
        """
        if self.dataset is None:
            raise ValueError("generated_batches needs an evaluator made by for_training")
        noise = torch.Generator().manual_seed(self.seed)
        time_factor = getattr(generator, "time_factor", None)
        device = next(generator.parameters()).device
        for videos, labels in _dataset_batches(self.dataset, self.indices, self.batch_size):
            z = generator.sample_latent(videos.shape[0], generator=noise)
            labels = labels.to(device) if generator.num_classes else None
            if time_factor is None:
                yield generator(z, labels).float().cpu()
            else:
                context = generator.temporal_receptive_field()
                condition = down(videos, time_factor, generator.space_factor)   # (B, 3, t, h, w)
                padded = pad_condition(condition, context).to(device)           # (B, 3, t + 2R, h, w)
                yield generator(padded, z, labels, context=context).float().cpu()

    def evaluate_generator(self, generator, out=None, step=None, save=None) -> dict:
        """Score `generator` (see generated_batches) -> {"fvd", "fid", "is", "is_std"}
        for the log line. With `out` and `save`: when the FVD is the best so far, save(step)
        writes out/ckpt.pt, which is copied to out/ckpt_best.pt, and out/ckpt_best.json
        records the step and FVD (so a resumed run still knows the best)."""
        result = compare(self.real, compute_statistics(
            self.model, self.generated_batches(generator), self.protocol, self.batch_size))
        record = {key: result[key] for key in ("fvd", "fid", "is", "is_std")}
        if out is not None and save is not None:
            out = Path(out)
            best_file = out / "ckpt_best.json"
            best = json.loads(best_file.read_text())["fvd"] if best_file.is_file() else math.inf
            record["fvd_best"] = min(best, result["fvd"])
            if result["fvd"] < best:
                save(step)
                tmp = out / "ckpt_best.pt.tmp"
                shutil.copyfile(out / "ckpt.pt", tmp)
                os.replace(tmp, out / "ckpt_best.pt")       # atomic: never half a best checkpoint
                best_file.write_text(json.dumps({"step": step, "fvd": result["fvd"],
                                                 "protocol": self.protocol.key()}) + "\n")
        return record


def _dataset_batches(dataset, indices, batch_size):
    """Items (video, label) of `dataset` at `indices` -> batches (videos (B, 3, T, H, W), labels (B,))."""
    for start in range(0, len(indices), batch_size):
        items = [dataset[int(i)] for i in indices[start:start + batch_size]]
        yield torch.stack([video for video, _ in items]), torch.tensor([int(label) for _, label in items])


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
# The command line.
# ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="FVD, FID and IS of generated videos against real ones (I3D, Kinetics-400).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    real = parser.add_argument_group("real videos")
    real.add_argument("--real", required=True,
                      help="a dataset of data.py (synthetic, kinetics600, bdd100k, ucf101, "
                           "folder, cache) or a folder of video files")
    real.add_argument("--real-root", default=None, help="the dataset's root folder (data.py's --data-root)")
    real.add_argument("--preset", default=None,
                      help="data.py shape preset of the real clips (default: the sampled "
                           "chain's, else --real if it names a preset, else tiny)")
    real.add_argument("--level", type=int, default=None,
                      help="level whose clip shape the real clips take (default: the last)")
    fake = parser.add_argument_group("generated videos").add_mutually_exclusive_group(required=True)
    fake.add_argument("--fake", default=None, help="a folder of generated video files")
    fake.add_argument("--runs", default=None,
                      help="sample from the checkpoints in this folder (level1/ckpt.pt, ...) with sample.py")
    fake.add_argument("--ckpt", nargs="+", default=None,
                      help="sample from these checkpoint files (level 1 first) with sample.py")
    protocol = parser.add_argument_group("protocol (changes the scores)")
    for f in dataclasses.fields(Protocol):
        protocol.add_argument("--" + f.name.replace("_", "-"), type=type(f.default),
                              default=f.default, help=f.metadata["help"])
    parser.add_argument("--i3d", default=None, help=f"I3D weights file (default: ${I3D_ENV})")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per I3D forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="which real clips / which samples")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for decoding")
    parser.add_argument("--stats-dir", default=None,
                        help="where real statistics are cached (default: $XDG_CACHE_HOME/hvg "
                             "or ~/.cache/hvg)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the real statistics")
    parser.add_argument("--out", default="metrics.json", help="JSON file for the results")
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
    the protocol and the I3D file, keys the statistics cache."""
    if Path(args.real).is_dir():
        files = VideoFiles(args.real, protocol)
        spec = {"kind": "video-files", "path": str(Path(args.real).resolve()),
                "files": len(files), "fingerprint": files.fingerprint()}
        return _loader(files, min(len(files), protocol.num_videos), args), spec
    import data
    preset = args.preset or chain_preset or (args.real if args.real in data.PRESETS else "tiny")
    level = args.level or (chain_levels if preset == chain_preset else None) or data.num_levels(preset)
    dataset = data.make_dataset(args.real, args.real_root, preset, level, seed=args.seed)
    count = min(len(dataset), protocol.num_videos)
    spec = {"kind": "dataset", "data": args.real,
            "root": str(Path(args.real_root).resolve()) if args.real_root else None,
            "preset": preset, "level": level, "seed": args.seed, "size": len(dataset)}
    return _loader(dataset, count, args, np.random.default_rng(args.seed)), spec


def fake_source(args, protocol: Protocol, device):
    """The generated clips as (batches, spec): a folder of files, or samples drawn
    chunk by chunk from a chain of checkpoints (sample.py)."""
    if args.fake is not None:
        files = VideoFiles(args.fake, protocol)
        spec = {"kind": "video-files", "path": str(Path(args.fake).resolve()), "files": len(files)}
        return _loader(files, min(len(files), protocol.num_videos), args), spec
    import sample

    chain = sample.load_chain(runs=args.runs, ckpts=args.ckpt, device=device)

    def batches():
        # sample.generate keeps a call's videos in host memory, so draw them a
        # batch at a time. Chunk c uses its own seed, seed * 1000003 + c: the set
        # is reproducible, chunks never repeat each other, and no two --seed
        # values share a chunk (fewer than 1000003 chunks).
        for chunk, start in enumerate(range(0, protocol.num_videos, args.batch_size)):
            count = min(args.batch_size, protocol.num_videos - start)
            videos = sample.generate(chain, count, args.seed * 1000003 + chunk, batch_size=count)
            yield take_frames(videos, protocol.frames, f"videos sampled from {args.runs or args.ckpt}")

    spec = {"kind": "samples", "checkpoints": [str(Path(p).resolve()) for p in chain.paths],
            "steps": list(chain.steps), "preset": chain.preset, "levels": len(chain.specs),
            "seed": args.seed}
    return batches(), spec


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


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    protocol = Protocol(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Protocol)})
    if protocol.frames < 1 or protocol.num_videos < 2 or protocol.resize < 1 or args.batch_size < 1:
        raise UserError(f"bad protocol {protocol} or --batch-size {args.batch_size}: need "
                        "frames >= 1, num_videos >= 2, resize >= 1, batch size >= 1")
    from training import resolve_device
    device = resolve_device(args.device)
    model = load_i3d(args.i3d, device=device)
    print(f"I3D: {model.i3d_path} ({model.i3d_format}) on {device}; {protocol}")

    fake_batches, fake_spec = fake_source(args, protocol, device)
    real, real_spec = cached_real_statistics(model, args, protocol, fake_spec.get("preset"),
                                             fake_spec.get("levels"))
    fake = compute_statistics(model, fake_batches, protocol, args.batch_size, "fake clips")
    result = compare(real, fake)
    result.update({"real_is": real.inception_score, "real_is_std": real.inception_score_std,
                   "protocol": protocol.key(), "real": real_spec, "fake": fake_spec,
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
