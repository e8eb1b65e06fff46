"""The training progress bar (rich, imported only when one is shown)."""

from __future__ import annotations

import math

__all__ = ["Progress"]


class Progress:
    """A bar over epochs and steps, its text the last epoch's bound, reconstruction and KL. Where
    the output is not a terminal (a log file, CI, a pipe), where a live bar shows nothing until
    the end, it prints a plain line instead: the first epoch, then at most one every
    ``interval`` seconds, and the last.

    A no-op when ``enabled`` is False, so the engine calls it unconditionally.
    """

    def __init__(self, enabled: bool, epochs: int, interval: float = 5.0):
        import sys

        self.enabled, self.epochs, self.interval = enabled, epochs, interval
        self._bar = self._task = None
        self._lines = enabled and not sys.stdout.isatty()
        self._last = -math.inf

    def __enter__(self) -> Progress:
        if self.enabled and not self._lines:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress._rich(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[terms]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("fit", total=self.epochs, epoch=f"0/{self.epochs}", terms="")
        return self

    @staticmethod
    def _rich(*columns):
        import sys

        from rich.console import Console
        from rich.progress import Progress as RichProgress

        console = None if sys.stdout.isatty() else Console(width=120)  # piped: room for the terms
        return RichProgress(*columns, console=console, transient=False, refresh_per_second=4)

    def resume(self, epoch: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=epoch, epoch=f"{epoch}/{self.epochs}")

    def epoch(self, epoch: int, history) -> None:
        if self._bar is None and not self._lines:
            return
        parts = [f"bound {history.lower_bound[-1]:.3f}"]
        if history.reconstruction and not math.isnan(history.reconstruction[-1]):
            parts += [f"recon {history.reconstruction[-1]:.3f}", f"KL {history.kl[-1]:.3f}"]
        if history.validation:
            parts.append(f"valid {history.validation[-1]:.3f}")
        if self._lines:
            import time

            now = time.monotonic()
            if epoch + 1 in (1, self.epochs) or now - self._last >= self.interval:
                self._last = now
                print(f"epoch {epoch + 1}/{self.epochs} · " + " · ".join(parts), flush=True)
            return
        self._bar.update(self._task, completed=epoch + 1, epoch=f"{epoch + 1}/{self.epochs}", terms=" · ".join(parts))

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
