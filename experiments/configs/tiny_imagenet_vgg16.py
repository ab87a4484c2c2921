"""VGG16 (CIFAR-style) on Tiny-ImageNet.

The paper's setup (Parger et al. 2022, arXiv 2210.14012): SGD with momentum 0.9, weight decay 5e-4,
batch 128, topology update every delta_t=100 steps with drop fraction alpha=0.3 cosine-decayed to
zero at 75% of training. Epochs and the step decay of the learning rate are our choice where the
paper leaves them open; every field can be overridden from the command line.
"""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.dataset = "tiny_imagenet"
    c.model = "vgg16"
    c.method = "ggr"
    c.init = "erk"
    c.sparsity = 0.95
    c.augment = True
    c.batch_size = 128
    c.eval_batch_size = 500
    c.num_epochs = 200
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.lr_schedule = "step"
    c.lr_decay_epochs = (100, 150)
    c.lr_decay_factor = 0.1
    c.delta_t = 100
    c.drop_fraction = 0.3
    c.end_fraction = 0.75
    c.checkpoint_every_epochs = 5
    return c
