"""Where tensors live: the one place that turns a device name (config ``train.device``, ``--device``) into a
``torch.device``, so that a machine without the asked accelerator fails at once with a clear error instead
of deep inside the first forward pass."""

from __future__ import annotations

import torch

from monorec.errors import ConfigError

__all__ = ["DEVICE_NAMES", "resolve_device"]

DEVICE_NAMES = ("auto", "cpu", "cuda")  # "cuda:N" picks one GPU
_SOURCE = "train.device / --device"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``; ``cuda`` / ``cuda:N`` -> that GPU.

    Raises:
        ConfigError: an unknown name, or a CUDA device this machine does not have (names the fix).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    base, _, number = name.partition(":")
    if base != "cuda" or (number and not number.isdigit()):
        raise ConfigError(_SOURCE, [f"device {name!r}: expected one of {', '.join(DEVICE_NAMES)} or cuda:N"])
    if not torch.cuda.is_available():
        why = f"built for CUDA: {torch.version.cuda or 'no'}"
        raise ConfigError(_SOURCE, [f"device {name!r}: this machine has no CUDA device ({why}); use cpu or auto"])
    if number and int(number) >= torch.cuda.device_count():
        raise ConfigError(_SOURCE, [f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"])
    return torch.device(name)
