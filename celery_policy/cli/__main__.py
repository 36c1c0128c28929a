"""``python -m celery_policy.cli``: the same as the ``celery-policy`` console script."""

import sys

from celery_policy.cli.root import main

sys.exit(main())
