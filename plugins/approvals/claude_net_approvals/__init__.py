"""claude-net-approvals (being built)."""
