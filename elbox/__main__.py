"""``python -m elbox`` (and ``torchrun -m elbox``): the command line."""

from elbox.cli.main import main

main()
