"""``python -m experiments.train``: the training command (its code is experiments/main.py).

The training itself is ``experiments.training.train_and_evaluate`` / ``train_methods``. This
module only starts the command, so that the cheap checks of the command line run before jax and
the models are imported.
"""

if __name__ == "__main__":
    from experiments import main

    raise SystemExit(main.train_main())
