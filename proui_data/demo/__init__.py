"""The embedded public-domain demo photos."""
