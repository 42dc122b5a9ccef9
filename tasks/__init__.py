"""Tasks: data, how a record becomes a query, the reference, a metric, and train/test splits.

    from switchgen.tasks import load_task, task_names
    task = load_task("gsm8k")                 # a built-in (tasks/definitions/*.yaml) or a YAML path
    records = task.records("test", limit=10)  # [{"id", "query", "reference", ...}]
    metric = task.metric()                    # loaded once per run (a reward model loads here)
    scores = metric.score(outputs, records)   # one float per output, in metric.range
"""

from switchgen.tasks.metric_factory import make_metric
from switchgen.tasks.metrics import METRICS, Metric
from switchgen.tasks.spec import ChoicesSpec, MetricSpec, Source, TaskSpec
from switchgen.tasks.task import Task, builtin_dir, load_task, task_names

__all__ = [
    "METRICS",
    "ChoicesSpec",
    "Metric",
    "MetricSpec",
    "Source",
    "Task",
    "TaskSpec",
    "builtin_dir",
    "load_task",
    "make_metric",
    "task_names",
]
