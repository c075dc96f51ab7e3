"""`python -m expertcache` runs the command line."""

from .cli import main

main()
