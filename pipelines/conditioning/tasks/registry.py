"""The task registry: name -> builder, and what each builder is handed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vace.pipelines.conditioning.annotators import AnnotatorEnv
from vace.pipelines.conditioning.primitives import Conditioning, TaskInputs
from vace.pipelines.conditioning.tasks.options import TaskOptions


@dataclass
class TaskContext:
    """Validated options and where annotators come from, for one build."""

    options: TaskOptions = field(default_factory=TaskOptions)
    env: AnnotatorEnv = field(default_factory=AnnotatorEnv)
    task: str = ""


TaskBuilder = Callable[[TaskInputs, TaskContext], Conditioning]
NeedsFn = Callable[[TaskInputs, TaskOptions], list[str]]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    builder: TaskBuilder
    needs: NeedsFn  # annotators the build will run (checked before any of them runs)
    summary: str


TASKS: dict[str, TaskSpec] = {}


def _no_annotators(inputs: TaskInputs, options: TaskOptions) -> list[str]:
    return []


def task(name: str, summary: str = "", needs: NeedsFn | None = None) -> Callable[[TaskBuilder], TaskBuilder]:
    def register(fn: TaskBuilder) -> TaskBuilder:
        TASKS[name] = TaskSpec(name, fn, needs or _no_annotators, summary or (fn.__doc__ or "").split("\n")[0])
        return fn

    return register
