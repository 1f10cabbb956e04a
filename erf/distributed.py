"""Probing sharded across processes (``torchrun``): which images a rank probes, and how partial results merge.

Each of ``world`` processes probes every ``world``-th image (``images[rank::world]``)
under the images' global indices and names, then sends its partial
accumulators to rank 0, which merges them and alone builds the result:

* occlusion, units: per unit the K strongest images.  The single-process
  top-K keeps entries in a total order, activation descending, then the
  image's rank among the sorted names ascending (``erf.occlusion._TopK``);
  the union of the ranks' top-K lists holds the global top-K, and sorting it
  by the same key gives exactly the single-process buffer, whatever the
  sharding.
* occlusion, one neuron: one grid map per image; the ranks' maps are disjoint.
* gradient ERF (Luo et al. 2016): partial sums of ``|grad|`` are added, then
  divided by the global input count.

Collectives are ``gather_object`` on the default process group (use gloo:
it carries Python objects on the CPU whatever device the probe runs on).

Example:
    >>> shard_indices(5, rank=1, world=2)
    [1, 3]
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.distributed as dist

__all__ = ["ProcessShard", "join_process_group", "shard_indices", "check_shard", "gather_to_main",
           "merge_topk", "merge_disjoint", "rank_state_path"]


@dataclass(frozen=True)
class ProcessShard:
    """This process's place in the group: ``rank`` of ``world``, its ``local_rank`` on the node.

    ``owned`` is True when :func:`join_process_group` created the group (the caller tears it down).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def leave(self) -> None:
        """Destroy the process group if this shard created it."""
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


def join_process_group(backend: str = "gloo") -> ProcessShard:
    """Join torchrun's group when ``WORLD_SIZE > 1`` and ``RANK`` are set; else a single process.

    The probe uses gloo (object collectives only, on the CPU whatever the device); training on
    CUDA passes ``backend="nccl"``.

    Example:
        >>> join_process_group()  # outside torchrun
        ProcessShard(rank=0, world=1, local_rank=0, owned=False)
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return ProcessShard(dist.get_rank(), dist.get_world_size(), local, owned=False)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        dist.init_process_group(backend)
        return ProcessShard(dist.get_rank(), dist.get_world_size(), local, owned=True)
    return ProcessShard()


def check_shard(rank: int, world: int) -> None:
    """Raise ValueError unless ``0 <= rank < world`` and, for ``world > 1``, the default group matches."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (rank, world)) or world < 1:
        raise ValueError(f"rank={rank!r}, world_size={world!r}; expected integers with world_size >= 1")
    if not 0 <= rank < world:
        raise ValueError(f"rank={rank} with world_size={world}; expected 0 <= rank < {world}")
    if world > 1:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(f"world_size={world} but no torch.distributed process group is initialised; "
                             "expected a run under torchrun (see erf.distributed.join_process_group)")
        if (dist.get_rank(), dist.get_world_size()) != (rank, world):
            raise ValueError(f"rank={rank}, world_size={world} but the process group says rank "
                             f"{dist.get_rank()} of {dist.get_world_size()}; expected the same")


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Global indices of the items rank ``rank`` of ``world`` handles: ``rank, rank + world, ...`` below ``n``.

    Example:
        >>> shard_indices(7, 0, 3), shard_indices(7, 2, 3)
        ([0, 3, 6], [2, 5])
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank={rank} with world_size={world}; expected 0 <= rank < {world}")
    return list(range(rank, n, world))


def gather_to_main(obj, rank: int, world: int) -> list | None:
    """Every rank's ``obj`` in rank order on rank 0 (``[obj]`` for one process); None on the other ranks."""
    if world == 1:
        return [obj]
    parts = [None] * world if rank == 0 else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def merge_topk(parts: Sequence[dict[str, np.ndarray]], k: int) -> dict[str, np.ndarray]:
    """Merge per-rank top-K buffers into the global one, ordered as ``erf.occlusion._TopK`` orders them.

    Each part holds ``values`` (U, K), ``ranks`` (U, K) (the image's rank among
    the sorted names; empty slots are ``-inf`` with the int64 max), ``locations``
    (U, K, 2) and ``maps`` (U, K, gh, gw). The key is activation descending,
    then image rank ascending: a total order over distinct images, so the
    merge does not depend on how the images were sharded, nor on the parts' order.

    Example:
        >>> a = {"values": np.array([[3.0, 1.0]]), "ranks": np.array([[0, 2]]),
        ...      "locations": np.zeros((1, 2, 2), int), "maps": np.zeros((1, 2, 1, 1))}
        >>> b = {**a, "values": np.array([[3.0, 2.0]]), "ranks": np.array([[1, 3]])}
        >>> merge_topk([b, a], 3)["ranks"].tolist()
        [[0, 1, 3]]
    """
    values = np.concatenate([p["values"] for p in parts], axis=1)  # (U, sum K)
    ranks = np.concatenate([p["ranks"] for p in parts], axis=1)  # (U, sum K)
    order = np.lexsort((ranks, -values), axis=1)[:, :k]  # (U, k): primary key -value, then rank
    out = {}
    for key in ("values", "ranks", "locations", "maps"):
        stacked = np.concatenate([p[key] for p in parts], axis=1)  # (U, sum K, ...)
        idx = order.reshape(order.shape + (1,) * (stacked.ndim - 2))
        out[key] = np.take_along_axis(stacked, idx, axis=1)
    return out


def merge_disjoint(parts: Sequence[dict]) -> dict:
    """Union of per-rank dicts keyed by image name; a name on two ranks is an internal error."""
    merged: dict = {}
    for part in parts:
        overlap = merged.keys() & part.keys()
        assert not overlap, f"images {sorted(overlap)} were probed by two ranks"
        merged.update(part)
    return merged


def rank_state_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    """The resume-state file of one rank: ``path`` itself for one process, else ``stem.rank{r}of{w}.suffix``.

    A run resumes only with the same number of processes; with another number
    the per-rank files are not found and those images are probed again.

    Example:
        >>> rank_state_path("out/state.npz", 1, 2).name
        'state.rank1of2.npz'
    """
    path = Path(path)
    return path if world == 1 else path.with_name(f"{path.stem}.rank{rank}of{world}{path.suffix}")
