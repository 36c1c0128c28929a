"""A bare producer app for ``dlq --app``: only its broker URL matters (``DL_BROKER_URL``).

Imported inside the test process, so unlike ``dlapp`` it installs no policy and
leaves logging alone.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("dl-cli-app", broker=os.environ["DL_BROKER_URL"])
