"""The default, offline job: MLP 64-300-100-10 on scikit-learn's digits at 98% sparsity.

Trains a dense reference, RigL and GGR in about a minute on a 2-core CPU. The initial densities are
uniform (2% in every layer, which starves the 100x10 output layer): RigL keeps them, GGR moves
connections to the layers whose gradients ask for them -- the paper's point in one minute.
"""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.dataset = "digits"
    c.model = "mlp"
    c.hidden = (300, 100)
    c.method = "dense,rigl,ggr"
    c.init = "uniform"
    c.sparsity = 0.98
    c.batch_size = 32
    c.eval_batch_size = 360
    c.num_epochs = 40
    c.learning_rate = 0.05
    c.weight_decay = 1e-4
    c.delta_t = 45
    c.drop_fraction = 0.3
    c.end_fraction = 0.75
    c.checkpoint_every_epochs = 10
    return c
