"""Tasks: each owns its targets, head, loss, predictions, metrics and trivial baseline.

Importing the package registers the built-in tasks in ``mmtl.registry.TASKS``, in this order, which
is the order data sets count the tasks their samples supervise (``data_pipelines.sample``).
"""
# isort: off
from mmtl.tasks import recognition  # noqa: F401
from mmtl.tasks import captioning  # noqa: F401
from mmtl.tasks import summarization  # noqa: F401
from mmtl.tasks import counting  # noqa: F401
# isort: on
