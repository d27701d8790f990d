"""Multi-GPU training of one scene on the Ray pool: the set-up (issue 15, item 3). EXPERIMENTAL.

gsplat's distributed mode (its ``simple_trainer``: ``world_size`` processes, one per GPU, each
holding ``1/world_size`` of the Gaussians and rendering its own cameras, the projected Gaussians
exchanged by ``rasterization(..., distributed=True)`` over NCCL; ``steps_scaler`` shortens the
schedule because each step sees ``world_size`` images) runs here as *one* Ray job holding several
GPUs:

- ``plan_ranks``: what each rank gets: its ``world_rank``, ``steps_scaler = 1 / world_size``, the
  scaled step count and refine schedule, its cameras and its share of the initial points
  (``points[rank::world_size]``, as gsplat's trainer shards them);
- ``run_group``: a placement group of ``world_size`` GPU bundles (all or nothing: the job never holds
  some GPUs while waiting for the rest), one rank actor per bundle, a ``torch.distributed``
  rendezvous at rank 0's node (NCCL on CUDA, gloo on CPU), the rank function run on every rank, the
  group released afterwards.

What is NOT done: the trainer's distributed step itself (gsplat's distributed rasterization is CUDA
and NCCL only, and ``backend/trainer.py`` has no sharded-Gaussian path yet), so the pool does not
offer multi-GPU train jobs: this machine and CI have no GPU, let alone several. The set-up above is
tested on CPU (tests/test_ray_distributed.py: a 2-rank group over a local Ray cluster's logical
GPUs, gloo all-reduce across the ranks, the plans).
"""
from __future__ import annotations

import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.jobkinds.train import schedule
from shared.jobspec import Settings


@dataclass(frozen=True)
class RankPlan:
    """One rank's part of a distributed train job (gsplat's conventions)."""

    world_size: int
    world_rank: int
    steps_scaler: float          # 1 / world_size: each step trains world_size images at once
    steps: int                   # ceil(settings.steps * steps_scaler)
    schedule: dict[str, int]     # the refine / SH schedule, scaled like the steps
    cameras: tuple[int, ...]     # the views this rank renders (round robin over the train views)

    def points(self, n: int) -> range:
        """The indices of this rank's share of ``n`` initial points (gsplat: ``[rank::world_size]``)."""
        return range(self.world_rank, n, self.world_size)


def plan_ranks(settings: Settings, world_size: int, views: int) -> list[RankPlan]:
    """The plans of ``world_size`` ranks training ``settings`` on ``views`` cameras. ValueError
    when there are fewer cameras than ranks (a rank would render nothing)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if views < world_size:
        raise ValueError(f"{views} views cannot feed {world_size} GPUs: each rank renders its own "
                         "views; use fewer GPUs")
    scaler = 1.0 / world_size
    sched = {k: max(1 if k != "refine_start" else 0, math.ceil(v * scaler))
             for k, v in schedule(settings).items()}
    steps = max(1, math.ceil(settings.steps * scaler))
    return [RankPlan(world_size, r, scaler, steps, sched, tuple(range(r, views, world_size)))
            for r in range(world_size)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class _Rank:
    """One rank of a group (a Ray actor holding one GPU of the placement group)."""

    def address(self) -> str:
        import ray
        return f"{ray.util.get_node_ip_address()}:{_free_port()}"

    def run(self, master: str, world_size: int, rank: int, fn: Callable[..., Any],
            args: tuple) -> Any:
        import ray
        import torch
        import torch.distributed as dist
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{master}", rank=rank,
                                world_size=world_size)
        try:
            return {"node": ray.get_runtime_context().get_node_id(), "backend": backend,
                    "value": fn(rank, world_size, *args)}
        finally:
            dist.destroy_process_group()


def run_group(world_size: int, fn: Callable[..., Any], args: tuple = (), num_cpus: float = 1.0,
              strategy: str = "PACK", timeout_s: float = 600.0) -> list[dict]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` ranks of one placement group (one GPU
    each), inside a ``torch.distributed`` process group. Returns one ``{"node", "backend",
    "value"}`` per rank, in rank order. TimeoutError when the cluster cannot give the GPUs within
    ``timeout_s``."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    pg = placement_group([{"GPU": 1, "CPU": num_cpus}] * world_size, strategy=strategy)
    try:
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            raise TimeoutError(f"the Ray cluster did not give {world_size} GPUs at once within "
                               f"{timeout_s:.0f} s")
        actor = ray.remote(_Rank)
        # Any: Ray types actor methods only under @ray.method (ray is imported lazily, not where _Rank is)
        ranks: list[Any] = [actor.options(num_gpus=1, num_cpus=num_cpus,
                               scheduling_strategy=PlacementGroupSchedulingStrategy(
                                   pg, placement_group_bundle_index=i)).remote()
                 for i in range(world_size)]
        master = ray.get(ranks[0].address.remote())
        try:
            return ray.get([r.run.remote(master, world_size, i, fn, args)
                            for i, r in enumerate(ranks)])
        finally:
            for r in ranks:
                ray.kill(r)
    finally:
        remove_placement_group(pg)
