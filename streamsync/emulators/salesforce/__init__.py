"""Salesforce emulator: OAuth, REST query, sObjects, Bulk API 2.0 query and CometD CDC."""

from .app import SalesforceEmulator, SalesforceEmulatorConfig
from .errors import SalesforceError
from .faults import FaultPlan
from .state import OrgState

__all__ = ["FaultPlan", "OrgState", "SalesforceEmulator", "SalesforceEmulatorConfig",
           "SalesforceError"]
