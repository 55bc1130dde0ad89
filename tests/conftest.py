"""Shared fixtures. The reusable ones ship in claude_net.testing (a pytest11 plugin)."""
