"""``python -m kdsearch``: the ``kdsearch`` command, for a Python where kdsearch is on the path but not installed
(the lent GPU machine, see benchmarks/gpu_check.sh)."""

from .cli import main

main()
