"""apbd: a build server for Arch Linux packages that speaks the APB server API."""

__version__ = "0.1.0"

# The API reports this in GET / and /health, as the original server did.
API_VERSION = "2025-07-28"
