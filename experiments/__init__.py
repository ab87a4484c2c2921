"""Experiments for ggr_jax: train any dynamic-sparse-training method on real data with one command.

Entry points (each is also ``python -m experiments.<name>``):

* ``experiments.train``   -- library-like training code (`train_and_evaluate`); run it to train.
* ``experiments.compare`` -- a grid of runs in parallel processes, a mean ± std table and plots.
"""
