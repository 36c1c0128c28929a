"""What the tests share: servers (Redis, RabbitMQ vhosts, Redis topologies), worker processes, and the test apps.

- ``support.servers``: private ``redis-server`` processes, ``celery worker`` processes, ``wait_for``
- ``support.rabbit``: pytest fixtures for private RabbitMQ vhosts (``pytest_plugins = ["support.rabbit"]``)
- ``support.topologies``: a Redis Cluster and a master/replica/sentinel set
- ``support.harness``: workers of the test apps, task results, run journals, decision logs
- ``support/apps/<area>/``: the apps the workers run (``-A tests.support.apps.<area>.<module>`` from the
  repository root) with the policies they are started with
"""
