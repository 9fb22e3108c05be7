"""`python -m bench` (`make bench`): the side-by-side benchmark of issue #9."""

from .cli import main

main()
