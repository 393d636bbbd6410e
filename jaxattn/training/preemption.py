"""SIGTERM / Ctrl-C handling: the training loop saves a checkpoint and exits cleanly."""

import signal
import threading


class StopRequest:
    """Sets ``requested`` on SIGTERM or SIGINT while active (a context manager).

    A second Ctrl-C while a stop is pending raises ``KeyboardInterrupt`` as usual.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False
