"""An app module that fails on import (check --app must exit 2, not crash)."""

raise RuntimeError("configuration missing: BROKER_URL")
