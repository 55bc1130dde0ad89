"""The ``[dashboard]`` configuration section."""

from __future__ import annotations

from dataclasses import dataclass

from claude_net import help_field


@dataclass
class DashboardSettings:
    enabled: bool = help_field(True, "Serve the admin dashboard at /ui/ (admins sign in with their token).")
    session_hours: float = help_field(12.0, "A dashboard session ends this many hours after sign-in, whatever "
                                            "happens; sign-out or revoking the admin's token ends it sooner.")
    max_sessions_per_admin: int = help_field(10, "Sessions one admin may hold at once; a new sign-in beyond this "
                                                 "ends that admin's oldest session.")
    secure_cookie: str = help_field("auto", "Mark the session cookie Secure: 'auto' (when the request came over "
                                            "TLS), 'always' (behind a TLS proxy that talks plain HTTP to the hub), "
                                            "or 'never'.")
    signin_failures: int = help_field(5, "Failed sign-ins one address may make per signin_window_seconds; "
                                         "past that its sign-ins are refused with 429 until the window passes.")
    signin_window_seconds: float = help_field(300.0, "The window of signin_failures, in seconds.")
