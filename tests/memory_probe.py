"""Helpers to measure peak resident memory (RSS, file-mapped pages included) of a load.

Run in a fresh subprocess so that the baseline is the process after imports.
"""

import os
import threading
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager: ``growth`` = peak RSS during the block minus RSS at its start."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._reset_hwm = False
        try:  # Linux: reset the high-water mark so VmHWM is the peak of this block
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._reset_hwm = True
        except OSError:
            pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        if self._reset_hwm:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
        self.growth = self.peak - self.base
        return False
