"""Raise the process's soft resource limits as far as the hard limits allow.

Builds of large packages (compilers, browsers) hit the usual soft limits on
open files, stack size and processes. An unprivileged process cannot pass its
hard limits, so each soft limit is raised to its hard limit, which is
"unlimited" where the admin allows it.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# The limits raised, by the name used in logs.
RAISED_LIMITS = {
    "AS": resource.RLIMIT_AS,
    "DATA": resource.RLIMIT_DATA,
    "STACK": resource.RLIMIT_STACK,
    "FSIZE": resource.RLIMIT_FSIZE,
    "NOFILE": resource.RLIMIT_NOFILE,
    "NPROC": resource.RLIMIT_NPROC,
}


def format_limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def raise_soft_limits() -> dict[str, dict[str, str]]:
    """Set every soft limit in RAISED_LIMITS to its hard limit.

    Returns, per limit name, the soft limit before and after and the hard
    limit, as strings ("unlimited" for no limit). A limit the kernel refuses
    to raise keeps its value and is logged as a warning.
    """
    result = {}
    for name, which in RAISED_LIMITS.items():
        soft, hard = resource.getrlimit(which)
        new_soft = soft
        if soft != hard:
            try:
                resource.setrlimit(which, (hard, hard))
                new_soft = hard
            except (ValueError, OSError) as e:
                log.warning("could not raise RLIMIT_%s from %s to %s: %s",
                            name, format_limit(soft), format_limit(hard), e)
        result[name] = {"before": format_limit(soft), "soft": format_limit(new_soft),
                        "hard": format_limit(hard)}
    log.info("resource limits: %s", ", ".join(
        f"{name}={values['soft']}" for name, values in result.items()))
    return result
