"""`python -m icl_lab` runs the command line."""

from icl_lab.cli import main

main()
