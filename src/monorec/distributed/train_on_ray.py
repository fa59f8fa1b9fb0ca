"""Training on Ray Train: the same training loop (:func:`monorec.train.train`) in N workers of a
``TorchTrainer``, data-parallel (:mod:`monorec.data_parallel`: each worker its shard of every batch,
gradients averaged with torch.distributed over the process group Ray Train sets up: gloo on CPU, NCCL on
GPU workers). The lead worker validates, selects the epoch, fuses the sources and reports the model as
Ray Train's checkpoint; the result is the same kind of bundle as a single-process run, published the same
way. Every worker reads the prepared data from its folder (a shared filesystem on a cluster).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from monorec.bundle import ModelBundle
from monorec.config import ProjectConfig
from monorec.data_parallel import DataParallel
from monorec.devices import resolve_device
from monorec.distributed.session import import_ray

__all__ = ["train_on_ray"]


def train_on_ray(
    config: ProjectConfig,
    prepared_dir: str | Path,
    *,
    workers: int = 2,
    canvases: tuple[str, ...] | None = None,
    device: str | None = None,
    storage: str | Path | None = None,
) -> ModelBundle:
    """Trains on ``workers`` Ray Train workers (Ray must be initialised: :func:`ray_session`).

    Args:
        config: the project config (each worker trains with one intra-op thread per CPU it is given).
        prepared_dir: a folder written by prepare, readable from every worker.
        workers: data-parallel workers, one CPU each (one GPU each when ``device`` is CUDA).
        canvases: train on these canvases only (a dedicated model).
        device: overrides ``train.device``; a CUDA device this machine lacks is refused at once.
        storage: where Ray Train keeps the run's checkpoint (default: a temporary folder, removed after).

    Raises:
        ConfigError: Ray missing, a bad device, or fewer than one worker.
    """
    import_ray()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    use_gpu = resolve_device(device or config.train.device).type == "cuda"
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, threads=1))
    own_storage = storage is None
    where = Path(storage) if storage is not None else Path(tempfile.mkdtemp(prefix="monorec-ray-train-"))
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "config": config,
            "prepared": str(Path(prepared_dir).resolve()),
            "canvases": canvases,
            "device": device,
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"monorec-train-{uuid.uuid4().hex[:8]}", storage_path=str(where.resolve())),
    )
    try:
        result = trainer.fit()
        assert result.checkpoint is not None, "the lead worker reports the model as the checkpoint"
        with result.checkpoint.as_directory() as folder:
            bundle = ModelBundle.load(folder)
    finally:
        if own_storage:
            shutil.rmtree(where, ignore_errors=True)
    bundle.meta["ray_workers"] = workers
    return bundle


def _worker(args: dict[str, Any]) -> None:
    """One Ray Train worker: the training loop on its shard; the lead reports the model."""
    from ray import train as ray_train

    from monorec.data.prepared import PreparedData
    from monorec.train import train

    context = ray_train.get_context()
    parallel = DataParallel(context.get_world_rank(), context.get_world_size())
    prepared = PreparedData.open(args["prepared"])
    bundle = train(
        args["config"], prepared, canvases=args["canvases"], progress=False, device=args["device"], parallel=parallel
    )
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if parallel.lead:
            bundle.save(folder)
            checkpoint = ray_train.Checkpoint.from_directory(folder)
        ray_train.report({"best_epoch": int(bundle.meta.get("best_epoch", -1))}, checkpoint=checkpoint)
