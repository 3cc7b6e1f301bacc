"""Multi-objective architecture search: ``Search(SearchConfig(...)).run()``.

A run directory holds ``config.yaml``, ``env.json``, ``study.journal`` (the Optuna storage), ``trials.csv``,
``pareto.json``, ``pareto/*.onnx`` and ``pareto.png`` (and ``ray.json`` when the trials ran as Ray tasks). Running
the same configuration on the same directory resumes: completed trials are kept, trials whose owner is gone (a
killed driver) are failed and redone (`nas.search.recovery`).
"""

from nas.search.config import SearchConfig, load_config_file
from nas.search.loop import Search, SearchResult
from nas.search.pareto import ParetoMember
from nas.search.recovery import count_finished, recover_interrupted
from nas.search.run_dir import default_run_dir, latest_run_dir
from nas.search.storage import STUDY_NAME, make_storage

__all__ = [
    "STUDY_NAME",
    "ParetoMember",
    "Search",
    "SearchConfig",
    "SearchResult",
    "count_finished",
    "default_run_dir",
    "latest_run_dir",
    "load_config_file",
    "make_storage",
    "recover_interrupted",
]
