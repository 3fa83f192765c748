"""Hooks that make long runs stop cleanly on SIGTERM/SIGINT."""

import logging
import signal
import threading

from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

__all__ = ["GracefulStop", "LogWriter", "TrainingInterrupted"]

logger = logging.getLogger(__name__)


class TrainingInterrupted(BaseException):
    """Raised after a signal-triggered checkpoint; a BaseException so Detectron2's loop does
    not log it as a crash, while `after_train` hooks still run."""

    def __init__(self, signum: int, iteration: int, checkpoint: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} after iteration {iteration}")
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint


class LogWriter(hooks.PeriodicWriter):
    """PeriodicWriter that writes each iteration at most once: a stop right after a periodic
    write would otherwise write it again in ``after_train``, which Detectron2's console
    writer cannot do in the first iterations (a division by zero in its ETA)."""

    def __init__(self, writers, period: int = 20):
        super().__init__(writers, period)
        self._written = -1

    def write_once(self) -> None:
        if self._written != self.trainer.iter:
            self._written = self.trainer.iter
            for writer in self._writers:
                writer.write()

    def after_step(self):
        it = self.trainer.iter
        if (it + 1) % self._period == 0 or it == self.trainer.max_iter - 1:
            self.write_once()

    def after_train(self):
        self.write_once()
        for writer in self._writers:
            writer.close()


class GracefulStop(HookBase):
    """On SIGTERM or SIGINT, finish the current iteration, save a checkpoint, and stop.

    Register it after every other hook: the checkpoint then holds the state after the
    iteration completed (LR scheduler stepped, log row written), so a resumed run continues
    with exactly the uninterrupted run's schedule. Further signals never interrupt the step
    or the save (they are logged; ``kill -9`` still stops at once, the last complete
    checkpoint stays). All ranks agree on stopping (the flag is gathered each step), so a
    signal that reaches only one process still stops the whole job consistently.
    """

    def __init__(self, checkpointer, signals=(signal.SIGTERM, signal.SIGINT)):
        self._checkpointer = checkpointer
        self._signals = signals
        self._received = 0
        self._saving = False
        self._previous = {}

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self._received:  # a terminal forwarding Ctrl-C twice, `timeout`, an impatient user
            doing = "saving the checkpoint" if self._saving else "finishing this iteration"
            logger.warning(f"Received {name} again: still {doing}, then stopping (kill -9 "
                           "stops at once; the last complete checkpoint stays)")
            return
        self._received = signum
        logger.warning(f"Received {name}: will save a checkpoint and stop after this iteration")

    def before_train(self):
        if threading.current_thread() is threading.main_thread():
            for s in self._signals:
                self._previous[s] = signal.signal(s, self._handler)

    def after_train(self):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def _write_logs(self) -> None:
        """The stopped iteration's log row (lr included) before its checkpoint, as every
        other iteration has it (a kill in between replays it instead of leaving a gap)."""
        for h in self.trainer._hooks:
            if isinstance(h, LogWriter):
                h.write_once()

    def after_step(self):
        flags = comm.all_gather(self._received) if comm.get_world_size() > 1 else [self._received]
        signum = next((f for f in flags if f), 0)
        if not signum:
            return
        it = self.trainer.iter
        name = f"model_{it:07d}"
        if comm.is_main_process():
            self._write_logs()
        self._saving = True
        try:
            self._checkpointer.save(name, iteration=it)
            comm.synchronize()
        finally:
            self._saving = False
        logger.warning(f"Saved {name}.pth after iteration {it}; continue with --resume")
        raise TrainingInterrupted(signum, it, name + ".pth")
