"""Device names resolve in one place, and an accelerator the machine lacks is refused at once, by name."""

import pytest
import torch

from monorec.devices import resolve_device
from monorec.errors import ConfigError


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_names_are_refused_by_name():
    for name in ("tpu", "cuda:x", "gpu", ""):
        with pytest.raises(ConfigError, match="expected one of auto, cpu, cuda"):
            resolve_device(name)


def test_cuda_without_a_gpu_is_a_clear_error_and_with_one_a_device():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        with pytest.raises(ConfigError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:  # the CI machines: no GPU
        with pytest.raises(ConfigError, match=r"has no CUDA device.*use cpu or auto"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="has no CUDA device"):
            resolve_device("cuda:0")


def test_train_with_a_missing_gpu_stops_before_reading_data(tmp_path, capsys):
    from monorec.cli import main

    code = main(["train", "--prepared", str(tmp_path / "none"), "--out", str(tmp_path / "m"), "--device", "cuda"])
    if not torch.cuda.is_available():
        assert code == 2 and "no CUDA device" in capsys.readouterr().err
    else:  # with a GPU the device is fine and the missing prepared folder is the error
        assert code != 0 and "no CUDA device" not in capsys.readouterr().err
