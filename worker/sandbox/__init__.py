"""A local, fault-injecting model of the UnleashX campaign-audience API.

Used for demos, the client's integration tests and benchmarks with millions of ids. Start it with
:func:`running_sandbox` (in-process, async) or :func:`serve` (foreground, blocking); inspect what a
client did through ``GET /_sandbox/state`` or ``SandboxHandle.state``. The records it serves are
described in ``records`` (deterministic from ``--seed``), the list and stats filters in
``filters``, the faults (``ack_without_delete`` included) in ``faults``.
"""

from worker.sandbox.faults import FaultConfig
from worker.sandbox.model import CampaignSpec, parse_campaign_spec
from worker.sandbox.runner import SandboxHandle, running_sandbox, serve, serve_forever
from worker.sandbox.server import SandboxConfig, create_app
from worker.sandbox.state import STATE_KEY, SandboxState

__all__ = [
    "STATE_KEY",
    "CampaignSpec",
    "FaultConfig",
    "SandboxConfig",
    "SandboxHandle",
    "SandboxState",
    "create_app",
    "parse_campaign_spec",
    "running_sandbox",
    "serve",
    "serve_forever",
]
