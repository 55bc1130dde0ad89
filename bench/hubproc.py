"""Benchmarks start real hubs with :class:`claude_net.testing.HubProcess`."""

from claude_net.testing import HubProcess, free_port

__all__ = ["HubProcess", "free_port"]
