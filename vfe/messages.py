"""vfe's own one-line messages (Lightning's and the libraries' are hidden unless --verbose)."""

import sys

from lightning.pytorch.utilities import rank_zero_only


@rank_zero_only
def say(message: str) -> None:
    """`vfe: message` on stderr, from rank 0 only."""
    print(f"vfe: {message}", file=sys.stderr, flush=True)


def say_on_this_rank(message: str) -> None:
    """`vfe: message` on stderr, from whichever rank it concerns."""
    print(f"vfe: {message}", file=sys.stderr, flush=True)


def count(number: int, noun: str) -> str:
    """`1 video`, `2 videos`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
