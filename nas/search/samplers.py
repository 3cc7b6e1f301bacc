"""Optuna samplers by name, with the defaults a short architecture search needs."""

from __future__ import annotations

from typing import Any

import optuna

from nas_ground.errors import UserInputError

SAMPLERS = ("nsga2", "tpe", "random", "coarse2fine")


def make_sampler(
    name: str, seed: int, trials: int, options: dict[str, Any], parallel: bool = False
) -> optuna.samplers.BaseSampler:
    """``parallel``: more than one trial may be in flight (Ray workers, several drivers); TPE then uses the constant
    liar, so trials asked while others run are not proposed next to them."""
    if name == "nsga2":
        # A population of a fifth of the budget (4..50) so that short searches still see several generations.
        opts = {"population_size": max(4, min(50, trials // 5)), **options}
        return optuna.samplers.NSGAIISampler(seed=seed, **opts)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **{"multivariate": True, "constant_liar": parallel, **options})
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed, **options)
    if name == "coarse2fine":  # the architectures come from nas.coarse2fine; the study only records them
        unknown = sorted(set(options) - {"levels"})
        if unknown:
            raise UserInputError(f"unknown coarse2fine option {unknown[0]!r}; valid: levels")
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserInputError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
