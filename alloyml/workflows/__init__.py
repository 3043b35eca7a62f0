"""Durable multi-step workflows on Ray tasks plus the metadata store: the only glue between the libraries
and the platform. Steps' states, attempts, timings and outputs are recorded so a workflow can resume.

    from alloyml.platform.client import Platform
    from alloyml.workflows import Input, Workflow, step, submit

    @step(num_cpus=1, max_retries=2)
    def train(x, y): ...

    wf = Workflow("train")
    wf.add(train, x=Input("x"), y=Input("y"))
    handle = submit(Platform(), wf, {"x": x, "y": y})
"""

from alloyml.workflows.api import WorkflowHandle, cancel, resume, submit
from alloyml.workflows.graph import Input, StepRef, Workflow
from alloyml.workflows.steps import Step, StepOptions, step

__all__ = ["Input", "Step", "StepOptions", "StepRef", "Workflow", "WorkflowHandle", "cancel", "resume", "step",
           "submit"]
