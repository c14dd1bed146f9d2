"""Running many trainings: a sweep's plan and search space, the Optuna study that holds it, its workers."""
