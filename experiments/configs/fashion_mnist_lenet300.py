"""LeNet-300-100 (MLP 784-300-100-10) on Fashion-MNIST; the grid of issue 5 runs this config."""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.dataset = "fashion_mnist"
    c.model = "mlp"
    c.hidden = (300, 100)
    c.method = "ggr"
    c.sparsity = 0.98
    c.batch_size = 100
    c.eval_batch_size = 1000
    c.num_epochs = 30
    c.learning_rate = 0.05
    c.weight_decay = 1e-4
    c.delta_t = 100
    return c
