"""Hooks that make long runs stop cleanly on SIGTERM/SIGINT."""

import logging
import signal
import threading

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["GracefulStop", "TrainingInterrupted"]

logger = logging.getLogger(__name__)


class TrainingInterrupted(BaseException):
    """Raised after a signal-triggered checkpoint; a BaseException so Detectron2's loop does
    not log it as a crash, while `after_train` hooks still run."""

    def __init__(self, signum: int, iteration: int, checkpoint: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} after iteration {iteration}")
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint


class GracefulStop(HookBase):
    """On SIGTERM or SIGINT, finish the current iteration, save a checkpoint, and stop.

    All ranks agree on stopping (the flag is gathered each step), so a signal that reaches
    only one process still stops the whole job consistently.
    """

    def __init__(self, checkpointer, signals=(signal.SIGTERM, signal.SIGINT)):
        self._checkpointer = checkpointer
        self._signals = signals
        self._received = 0
        self._previous = {}

    def _handler(self, signum, frame):
        if self._received:  # second signal: give up waiting for the step
            raise KeyboardInterrupt
        self._received = signum
        logger.warning(f"Received {signal.Signals(signum).name}: will save a checkpoint and stop "
                       "after this iteration")

    def before_train(self):
        if threading.current_thread() is threading.main_thread():
            for s in self._signals:
                self._previous[s] = signal.signal(s, self._handler)

    def after_train(self):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def after_step(self):
        flags = comm.all_gather(self._received) if comm.get_world_size() > 1 else [self._received]
        signum = next((f for f in flags if f), 0)
        if not signum:
            return
        it = self.trainer.iter
        name = f"model_{it:07d}"
        self._checkpointer.save(name, iteration=it)
        comm.synchronize()
        logger.warning(f"Saved {name}.pth after iteration {it}; continue with --resume")
        raise TrainingInterrupted(signum, it, name + ".pth")
