"""LeNet-5 (conv 6-16, dense 120-84-10) on Fashion-MNIST."""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.dataset = "fashion_mnist"
    c.model = "lenet5"
    c.method = "ggr"
    c.sparsity = 0.95
    c.batch_size = 100
    c.eval_batch_size = 1000
    c.num_epochs = 30
    c.learning_rate = 0.05
    c.weight_decay = 1e-4
    c.delta_t = 100
    return c
