"""The system a user drives: CLI, data, training, evaluators, search loop and run directories."""
