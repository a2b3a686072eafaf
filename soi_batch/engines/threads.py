"""torch's intra-op thread count: a process-wide setting, set by the code that owns the process.

The Ray Data actor, the Spark task and the HF engine's ``num_threads`` option all go through
:func:`set_torch_threads`; nothing else in the package changes torch's threads.
"""

from __future__ import annotations

from soi_batch.errors import ConfigError


def set_torch_threads(n: int) -> None:
    """Run torch's CPU ops on ``n`` threads, for the whole process (``torch.set_num_threads``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"torch threads must be an integer ≥ 1, got {n!r}")
    import torch

    torch.set_num_threads(n)
