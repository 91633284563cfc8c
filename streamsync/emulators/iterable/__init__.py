"""Emulated Iterable API (users endpoints) with Iterable's limits, failures and a control API."""

from .app import IterableEmulator
from .config import IterableEmulatorConfig
from .faults import FaultPlan
from .profiles import Profile, Project, ProjectType
from .ratelimit import DEFAULT_RATES, Limit, RateLimiter, TokenBucket
from .state import EmulatorState

__all__ = [
    "DEFAULT_RATES",
    "EmulatorState",
    "FaultPlan",
    "IterableEmulator",
    "IterableEmulatorConfig",
    "Limit",
    "Profile",
    "Project",
    "ProjectType",
    "RateLimiter",
    "TokenBucket",
]
