"""Thread limits for worker processes."""

from __future__ import annotations


def limit_blas_threads(n: int = 1) -> None:
    """Limit numpy's BLAS to ``n`` threads for the rest of the process (a worker: 1).

    Many tiny BLAS calls handed to a multi-threaded OpenBLAS pool cost milliseconds each on a
    busy machine. Without the optional ``threadpoolctl`` this does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(n, user_api="blas")
