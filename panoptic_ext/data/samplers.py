"""A training sampler that can continue a shuffled stream where an interrupted run stopped."""

import itertools
from collections.abc import Iterator

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's infinite shuffled sampler, plus `skip`: the number of this rank's indices
    already consumed. Set it (with the same seed) before the loader is first iterated, and a
    resumed run sees exactly the samples the interrupted one would have seen next."""

    def __init__(self, size: int, shuffle: bool = True, seed: int | None = None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.skip = 0

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)

    def __iter__(self) -> Iterator[int]:
        start = self._rank + self.skip * self._world_size
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)
