"""One process or many: torchrun environment, DDP / FSDP2 wrapping, collectives and full state dicts.

Without torchrun everything here degrades to no-ops on one process, so the same loop runs a laptop test
and an 8-GPU job. Rank 0 alone logs and writes files; every rank takes part in every collective.

    env = init()                       # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
    model = wrap(model, "ddp", env)
    with no_sync(model, last_micro=False): loss.backward()
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Env:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init(device: str | None = None) -> Env:
    """Join the torchrun process group when there is one (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=30))
    return Env(rank=rank, world=world, local_rank=local, device=dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place, then returned; a no-op on one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder layers of an HF causal LM (Qwen2/Llama: model.layers, OPT: decoder.layers,
    GPT-NeoX: gpt_neox.layers): the unit of FSDP sharding and of regional torch.compile."""
    found = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0
             and all(type(x) is type(m[0]) for x in m) and sum(1 for _ in m[0].parameters()) > 2]
    return list(max(found, key=len)) if found else []


def wrap(model: nn.Module, strategy: str, env: Env) -> nn.Module:
    """DDP or FSDP2 on several processes; the bare model on one."""
    if not env.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard block by block, then the root (embeddings, head, final norm): each block's parameters are
        # gathered just before it runs and freed after, so peak memory is one block plus the shards.
        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.local_rank] if env.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


@contextmanager
def grad_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if hasattr(model, "no_sync") and not sync:  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    with nullcontext():
        yield


def is_fsdp(model: nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict on CPU; under FSDP it is complete on rank 0 only."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_state_dict(state)


def optim_state(model: nn.Module, optimizer) -> dict:
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = getattr(optimizer, "optimizers", [optimizer])
        return {str(i): get_optimizer_state_dict(model, o, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
                for i, o in enumerate(opts)}
    return optimizer.state_dict()


def load_optim_state(model: nn.Module, optimizer, state: dict) -> None:
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        opts = getattr(optimizer, "optimizers", [optimizer])
        for i, o in enumerate(opts):
            set_optimizer_state_dict(model, o, state[str(i)], options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)
