"""`Workflow`: a DAG of steps built by adding steps whose arguments are inputs, constants or the outputs of
steps added before (so the graph cannot have a cycle).

    wf = Workflow("train-and-score")
    model = wf.add(train, x=Input("x_train"), y=Input("y_train"), C=1.0)
    wf.add(score, model=model, x=Input("x_test"), y=Input("y_test"))   # the last step is the output

The graph round-trips through a JSON spec (`to_spec` / `from_spec`) that the store keeps, so any process
that can import the step functions can resume the workflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from alloyml.errors import InvalidInputError
from alloyml.workflows.steps import Step, resolve_step

SPEC_VERSION = 1


@dataclass(frozen=True)
class Input:
    """A workflow input, supplied at submission: `submit(platform, wf, {"name": value})`."""

    name: str


@dataclass(frozen=True)
class StepRef:
    """The output of step `name`, usable as an argument of later steps."""

    name: str


@dataclass(frozen=True)
class StepNode:
    name: str
    step: Step
    args: dict  # argument name -> Input | StepRef | JSON-able constant

    @property
    def depends_on(self) -> list[str]:
        return sorted({v.name for v in self.args.values() if isinstance(v, StepRef)})

    @property
    def inputs(self) -> set[str]:
        return {v.name for v in self.args.values() if isinstance(v, Input)}


class Workflow:
    """A named DAG of steps. `output` names the step whose output is the workflow's result (default: the
    step added last)."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: dict[str, StepNode] = {}
        self.output: str | None = None

    def add(self, step: Step, *, name: str | None = None, **args) -> StepRef:
        """Add `step` called with `args`; returns a reference to its output. `name` defaults to the
        function's name, numbered (`score_2`, ...) when the same step is added again."""
        if not isinstance(step, Step):
            raise InvalidInputError(
                f"workflow {self.name!r}: {getattr(step, '__name__', step)!r} is not a step; decorate it with @step")
        if "<locals>" in step.ref:
            raise InvalidInputError(
                f"workflow {self.name!r}: step {step.ref!r} is defined inside a function; define steps at module "
                "level so workers and `resume` can import them")
        if name is None:
            name, k = step.__name__, 2
            while name in self.nodes:
                name, k = f"{step.__name__}_{k}", k + 1
        elif name in self.nodes:
            raise InvalidInputError(f"workflow {self.name!r} already has a step named {name!r}")
        for arg, value in args.items():
            if isinstance(value, StepRef):
                if value.name not in self.nodes:
                    raise InvalidInputError(f"step {name!r}: argument {arg!r} refers to unknown step {value.name!r}")
            elif not isinstance(value, Input):
                _check_constant(f"step {name!r} argument {arg!r}", value)
        self.nodes[name] = StepNode(name, step, dict(args))
        return StepRef(name)

    def place(self, name: str, **options) -> None:
        """Override step `name`'s `StepOptions` in this workflow only (say `resources={"gpu_node": 1}` to pin
        it to the nodes that offer that custom Ray resource); stored in the spec, so `resume` keeps it."""
        if name not in self.nodes:
            raise InvalidInputError(f"workflow {self.name!r} has no step named {name!r}; steps: {sorted(self.nodes)}")
        from pydantic import ValidationError

        node = self.nodes[name]
        try:
            placed = type(node.step.options).model_validate({**node.step.options.model_dump(), **options})
        except ValidationError as err:
            raise InvalidInputError(f"workflow {self.name!r}: bad options for step {name!r}: {err}") from None
        self.nodes[name] = StepNode(name, Step(node.step.fn, placed), node.args)

    @property
    def output_step(self) -> str:
        if not self.nodes:
            raise InvalidInputError(f"workflow {self.name!r} has no steps")
        output = self.output.name if isinstance(self.output, StepRef) else self.output
        if output is None:
            return next(reversed(self.nodes))
        if output not in self.nodes:
            raise InvalidInputError(f"workflow {self.name!r}: output {output!r} is not one of its steps")
        return output

    @property
    def inputs(self) -> set[str]:
        return set().union(*(node.inputs for node in self.nodes.values()))

    def check_inputs(self, given: dict) -> None:
        missing, unknown = sorted(self.inputs - set(given)), sorted(set(given) - self.inputs)
        if missing or unknown:
            raise InvalidInputError(
                f"workflow {self.name!r} takes inputs {sorted(self.inputs)}"
                + (f"; missing {missing}" if missing else "") + (f"; unexpected {unknown}" if unknown else ""))

    # -- the stored form -----------------------------------------------------------------------------------
    def to_spec(self) -> dict:
        return {
            "version": SPEC_VERSION,
            "output": self.output_step,
            "steps": [{"name": node.name, "fn": node.step.ref,
                       "args": {k: _encode_arg(v) for k, v in node.args.items()},
                       "options": node.step.options.model_dump()} for node in self.nodes.values()],
        }

    def step_rows(self) -> list[dict]:
        """What the store keeps per step: name, upstream steps, resources."""
        return [{"name": node.name, "depends_on": node.depends_on,
                 "resources": node.step.options.model_dump(include={"num_cpus", "num_gpus", "memory", "resources"})}
                for node in self.nodes.values()]

    @classmethod
    def from_spec(cls, name: str, spec: dict) -> Workflow:
        """Rebuild from `to_spec()`, importing each step; the stored options are the ones that apply."""
        if spec.get("version") != SPEC_VERSION:
            raise InvalidInputError(f"workflow spec version {spec.get('version')!r}; this alloyml reads {SPEC_VERSION}")
        workflow = cls(name)
        for item in spec["steps"]:
            found = resolve_step(item["fn"])
            stored = Step(found.fn, type(found.options).model_validate(item["options"]))
            workflow.add(stored, name=item["name"], **{k: _decode_arg(v) for k, v in item["args"].items()})
        workflow.output = spec["output"]
        return workflow


def _check_constant(what: str, value) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(
            f"{what} is a constant of type {type(value).__name__} that is not JSON-able; pass it as an Input") from err


def _encode_arg(value) -> dict:
    if isinstance(value, Input):
        return {"input": value.name}
    if isinstance(value, StepRef):
        return {"step": value.name}
    return {"value": value}


def _decode_arg(item: dict):
    if "input" in item:
        return Input(item["input"])
    if "step" in item:
        return StepRef(item["step"])
    return item["value"]
