"""Where training runs: the device, the precision and the processes, on PyTorch's own engine.

Processes come from the launcher the user already has (`torchrun`, `accelerate launch`, a cluster's), which sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; we join its process group (gloo on CPU, NCCL on GPUs) and let
DistributedDataParallel average the gradients. We use torch.distributed directly rather than Accelerate's
`Accelerator`: its state is a process-wide singleton whose precision cannot change once set, while one recipe
(and one test session) runs stages at different precisions; and resuming bit-identically needs the sampler
position and RNG states in our own checkpoint, which Accelerate keeps in its own format.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.config import Precision, TrainConfig
from compress.errors import RecipeError, StageError

log = logging.getLogger("compress")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# a stage that only rank 0 runs (export, profile) can take long: the other ranks wait for it at a barrier
BARRIER_TIMEOUT = datetime.timedelta(hours=6)


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as the launcher set them; (0, 1, 0) without a launcher."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 arithmetic is native here (else autocast emulates it, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return device.type == "mps"


def resolve_device(spec: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """The device `train.device` names, or a clear error that says what this machine has."""
    where = f"train.device: {spec!r}"
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise RecipeError(f"{where}: this machine has no Apple GPU (MPS) that torch can use. Use `cpu` or `auto`.")
        return torch.device("mps")
    if not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise RecipeError(f"{where}: {why} (torch {torch.__version__}). Use `cpu` or `auto`.")
    count = torch.cuda.device_count()
    if spec == "cuda":
        return torch.device("cuda", local_rank % count)
    index = int(spec.split(":")[1])
    if index >= count:
        raise RecipeError(f"{where}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}.")
    if world > 1:
        raise RecipeError(
            f"{where} puts all {world} processes on one GPU; use `cuda` (each process takes the GPU of its "
            "LOCAL_RANK) or CUDA_VISIBLE_DEVICES to choose the GPUs."
        )
    return torch.device("cuda", index)


@dataclass
class Engine:
    """The device, precisions and process group every training stage of a run shares."""

    device: torch.device
    precision: Precision
    teacher_precision: Precision
    accumulation: int = 1
    gradient_checkpointing: bool = False
    checkpoint_every: int | None = None
    rank: int = 0
    world: int = 1
    notes: tuple[str, ...] = ()

    @classmethod
    def single_cpu(cls) -> Engine:
        """One process, fp32, on the CPU: what a stage gets outside `pipeline.run` (a benchmark's own context)."""
        return cls(torch.device("cpu"), "fp32", "fp32")

    @classmethod
    def create(cls, cfg: TrainConfig | None, *, join: bool = True) -> Engine:
        """Resolve ``cfg`` on this machine (a clear error for a device it lacks); with ``join``, also join the
        launcher's process group when there is one."""
        cfg = cfg or TrainConfig()
        rank, world, local = launched_world()
        device = resolve_device(cfg.device, local, world)
        notes: list[str] = []

        def effective(p: Precision, what: str) -> Precision:
            if p == "fp16" and device.type == "cpu":
                raise RecipeError(
                    f"train.{what}: fp16 needs a GPU (loss scaling on a CPU only slows training); on {device} use "
                    "bf16 or fp32."
                )
            if p == "bf16" and not native_bf16(device):
                notes.append(f"{what} bf16 -> fp32: {device} has no native bf16 (AVX512-BF16 or AMX)")
                return "fp32"
            return p

        precision = effective(cfg.precision, "precision")
        teacher = effective(cfg.teacher_precision or cfg.precision, "teacher_precision")
        engine = cls(device, precision, teacher, cfg.gradient_accumulation, cfg.gradient_checkpointing,
                     cfg.checkpoint_every, rank, world, tuple(notes))  # fmt: skip
        if join and world > 1:
            engine._join(local)
        return engine

    def _join(self, local: int) -> None:
        import torch.distributed as dist

        if not dist.is_available():
            raise RecipeError("this torch build has no torch.distributed: run one process.")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        if dist.get_world_size() != self.world:
            raise RecipeError(f"WORLD_SIZE is {self.world} but the process group has {dist.get_world_size()}.")

    # ---- what a run records -------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def key(self) -> dict[str, str]:
        """What changes the weights a stage trains, for the stage cache key: the precisions (only when not fp32,
        so that fp32 runs keep their keys). Never the device or the number of processes."""
        out: dict[str, str] = {}
        if self.precision != "fp32":
            out["precision"] = self.precision
        if self.teacher_precision != "fp32":
            out["teacher_precision"] = self.teacher_precision
        return out

    def describe(self) -> dict[str, Any]:
        """For the manifest: where and how this run trained."""
        backend = None
        if self.distributed:
            import torch.distributed as dist

            backend = dist.get_backend() if dist.is_initialized() else None
        return {
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            "world_size": self.world,
            "backend": backend,
            "precision": self.precision,
            "teacher_precision": self.teacher_precision,
            "gradient_accumulation": self.accumulation,
            "gradient_checkpointing": self.gradient_checkpointing,
            "engine": f"torch{'.distributed (DDP)' if self.distributed else ''} {torch.__version__}",
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        procs = f"{self.world} processes (DDP, {backend})" if self.distributed else "1 process"
        teacher = f", teacher {self.teacher_precision}" if self.teacher_precision != self.precision else ""
        extra = f"; {'; '.join(self.notes)}" if self.notes else ""
        return f"training on {self.device}, {self.precision}{teacher}, {procs}{extra}"

    # ---- running ------------------------------------------------------------------------------------------
    def autocast(self, precision: Precision | None = None) -> contextlib.AbstractContextManager[Any]:
        p = precision or self.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[p])

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``module`` when there are several processes (gradients averaged in
        the backward pass); ``module`` itself otherwise. Parameters a step leaves unused (a loss term's, a
        sub-network's) are allowed."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def check_batch(self, batch_size: int, n_train: int, label: str) -> None:
        """Every process needs at least one example per micro-batch."""
        parts = self.world * self.accumulation
        if batch_size < parts:
            raise StageError(
                f"{label}: batch_size {batch_size} cannot be split over {self.world} process(es) x "
                f"{self.accumulation} accumulation step(s); give a batch_size of at least {parts}, or fewer "
                "processes (--nproc_per_node) or accumulation steps."
            )
        if n_train < parts:
            raise StageError(
                f"{label}: the training split has {n_train} examples, fewer than the {self.world} process(es) x "
                f"{self.accumulation} accumulation step(s) that each need one; use fewer processes."
            )

    def my_micro_batches(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """This process's micro-batches of one global batch: a contiguous share per process, then split into
        `accumulation` parts. A final global batch too small to give everyone an example is dropped (only
        possible under several processes or accumulation)."""
        if len(indices) < self.world * self.accumulation:
            return []
        mine = torch.tensor_split(indices, self.world)[self.rank]
        return list(torch.tensor_split(mine, self.accumulation))

    def shard(self, n: int) -> tuple[int, int]:
        """The [start, stop) range of ``n`` items this process evaluates."""
        bounds = [round(n * r / self.world) for r in range(self.world + 1)]
        return bounds[self.rank], bounds[self.rank + 1]

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """Every process's ``part`` (rows of this process's shard, in order), concatenated in rank order."""
        if not self.distributed:
            return part
        import torch.distributed as dist

        local = part.to(self.device)
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([local.shape[0]], device=self.device))
        most = int(max(s.item() for s in sizes))
        padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[: local.shape[0]] = local
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded)
        return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes, strict=True)]).to(part.device)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over processes of ``value`` (each process passes its weighted share), on the CPU."""
        if not self.distributed:
            return value.detach().cpu()
        import torch.distributed as dist

        total = value.detach().to(self.device, torch.float32).clone()
        dist.all_reduce(total)
        return total.cpu()

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def no_sync(self, module: nn.Module, skip: bool) -> Iterator[None]:
        """Inside: gradients accumulate locally (DDP's no_sync) when ``skip`` (a micro-batch before the last)."""
        no_sync = getattr(module, "no_sync", None)
        if skip and no_sync is not None:
            with no_sync():
                yield
        else:
            yield


@dataclass
class Session:
    """What a stage's training calls share: the engine, the recipe's seed, and the folder where this stage's
    training checkpoints live (None: no checkpoints, no resume)."""

    engine: Engine
    seed: int
    checkpoints: Path | None = None
