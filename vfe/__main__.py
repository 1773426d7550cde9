"""`python -m vfe` is the same as the `vfe` console script."""

from vfe.cli import main

main()
