"""Process settings the ``vbproto`` command makes before anything imports numpy.

The command does no linear algebra, yet importing numpy starts OpenBLAS's thread pool: one
thread per core, ~50 ms of every command's start-up on this 2-core machine (``python -c
"import numpy"`` 0.134 s, 0.082 s with ``OPENBLAS_NUM_THREADS=1``; issue 13).  A value the
user set wins.  Imported by the CLI only: a program that imports the package as a library
keeps its own BLAS threads.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
