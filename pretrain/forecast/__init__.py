"""Forecast a schedule's loss before paying for it (issue 14).

Fit a schedule-aware loss law (the Multi-Power Law, or the LR-annealing law) to runs' loss
curves, predict the loss curve of any registered schedule, and search a family of schedules for
the lowest predicted final loss. Command line: ``python -m pretrain.forecast fit|predict|optimize``.

Python API::

    from pretrain.forecast import fit_law, read_run, lrs_for_schedule, optimize_schedule, FittedLaw

    law = fit_law([read_run("runs/a"), read_run("runs/b")], "mpl")   # or (lrs, steps, losses) tuples
    law.predict(lrs)            # the loss after every update of an LR sequence
    law.save("law.json"); FittedLaw.load("law.json")
    cfg, final = optimize_schedule(law, peak_lr=3e-3, max_steps=2000, warmup_steps=200, family="wsd")

Recommended (issue 22): fit on a constant run, a cosine decay to 10% and a two-stage step decay (x0.3 at 50%)
at one peak LR and budget, on validation loss evaluated every <= 25 updates (``read_run(d, "auto")``), and
score forecasts on whole held-out curves with :mod:`pretrain.forecast.score` (PredE, WorstE, final-loss
error, R², a trivial baseline, Spearman with an interval).
"""

from .fit import FittedLaw, ForecastError, RunCurve, fit_law, read_run
from .laws import LAWS, annealing, mpl, warmup_of
from .optimize import FAMILIES, lrs_for_config, lrs_for_schedule, optimize_schedule, schedule_override, schedule_yaml

__all__ = ["FittedLaw", "ForecastError", "RunCurve", "fit_law", "read_run", "LAWS", "mpl", "annealing", "warmup_of",
           "FAMILIES", "lrs_for_schedule", "lrs_for_config", "optimize_schedule", "schedule_yaml", "schedule_override"]
