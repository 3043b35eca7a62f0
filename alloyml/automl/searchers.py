"""The Ray Tune search algorithms `hyperparameter_search` uses.

Imported only when a search runs: it imports Ray and Optuna at the top, so that Tune, which pickles its
config (search algorithm included) into the experiment folder, finds the Optuna subclass by name.
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import TPESampler
from optuna.trial import TrialState, create_trial
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from alloyml.automl.hpo import tpe_startup_trials


class StoppedArePrunedOptunaSearch(OptunaSearch):
    """OptunaSearch that tells the study an early-stopped trial was *pruned*.

    When ASHA stops a trial, Tune calls `on_trial_complete` with the trial's last (partial) result, and
    OptunaSearch records that partial score as the trial's final value: with a metric that changes over
    the steps, TPE then models scores no full trial reached. Optuna's TPE ranks pruned trials by the step
    they reached, below every completed one, which is what an early stop means.
    """

    def __init__(self, *args, max_iterations: int, evaluated: list[tuple[dict, float | None, str]] = (), **kwargs):
        self._max_iterations = max_iterations
        self._evaluated = list(evaluated)
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        # A resumed search's recorded trials, told to the study before it suggests anything. Their steps are
        # not recorded; a stopped one is put at step 1, the lowest rank Optuna gives pruned trials.
        for config, value, status in self._evaluated:
            if status == "completed" and value is not None:
                trial = create_trial(state=TrialState.COMPLETE, value=value, params=config, distributions=self._space)
            elif status != "error" and value is not None:
                trial = create_trial(state=TrialState.PRUNED, params=config, distributions=self._space,
                                     intermediate_values={1: value})
            else:
                trial = create_trial(state=TrialState.FAIL, params=config, distributions=self._space)
            self._ot_study.add_trial(trial)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False):
        steps = (result or {}).get("training_iteration")
        if (not error and steps is not None and steps < self._max_iterations
                and trial_id in self._ot_trials and trial_id not in self._completed_trials):
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


def build_searcher(searcher: str, *, num_samples: int, max_iterations: int, points: list[dict], seed: int,
                   evaluated: list[tuple[dict, float | None, str]] = ()):
    """The Tune search algorithm: `points` are evaluated first, in order, then TPE (after its random
    startup trials, `points` counted among them) or seeded random sampling.

    `evaluated`: (config, score or None, status) of trials a resumed search already ran. TPE learns from
    them; the random streams are offset by their number so that a resumed search does not draw the
    configurations it already tried again."""
    seed = seed + len(evaluated)
    if searcher == "optuna":
        sampler = TPESampler(seed=seed, n_startup_trials=tpe_startup_trials(num_samples))
        return StoppedArePrunedOptunaSearch(points_to_evaluate=points or None, sampler=sampler,
                                            max_iterations=max_iterations, evaluated=evaluated)
    return BasicVariantGenerator(points_to_evaluate=points or None, random_state=seed)
