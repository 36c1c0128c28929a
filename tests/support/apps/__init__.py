"""The Celery apps the tests' workers run, one folder per area, each next to its policy files."""
