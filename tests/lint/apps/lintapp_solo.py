# mypy: ignore-errors
# (Celery and kombu ship no type information; these modules only exist to be imported by --app.)
"""A Celery app whose workers use the solo pool (time limits are ignored there)."""

from celery import Celery

app = Celery("lintapp_solo", broker="memory://", set_as_current=False)
app.conf.worker_pool = "solo"
app.conf.task_create_missing_queues = False


@app.task(name="jobs.run", shared=False)
def run(job_id: int) -> None:
    """Run one job."""
