"""Build recipes (one per source) and training configs, shipped as package data."""
