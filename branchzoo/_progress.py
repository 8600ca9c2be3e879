"""What a slow step is doing, one line per stage on stderr (as tfds and Keras say it).

Shown when stderr is a terminal and not quietened (`set_quiet`, which
train.py and evaluate.py call for ``--quiet``): a log file or a pipe stays
free of them, and stdout keeps only results.
"""

import contextlib
import sys
import time

_quiet = False


def set_quiet(quiet):
    """Silences (True) or restores (False) the progress lines of this process."""
    global _quiet
    _quiet = bool(quiet)


def quiet():
    """True under `set_quiet(True)`."""
    return _quiet


def enabled():
    """True when progress lines are shown: not quiet, and stderr is a terminal."""
    stream = sys.stderr
    return not _quiet and stream is not None and getattr(stream, "isatty", lambda: False)()


def say(message):
    """Prints `message` on stderr when progress is shown."""
    if enabled():
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(message):
    """Says ``message ...`` before the block and how long it took after it (not on an error)."""
    shown = enabled()
    if shown:
        print(f"{message} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    yield
    if shown:
        print(f"  done in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
