"""claude-net-dashboard (being built)."""
