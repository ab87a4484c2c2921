"""Fields shared by every config. Each named config starts from here and changes what differs."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = ""
    # Data.
    c.dataset = "digits"  # digits | fashion_mnist | cifar100 | tiny_imagenet
    c.data_source = "auto"  # auto | local | tfds (see experiments/data.py)
    c.data_dir = ""  # local files (IDX, cifar-100-python) or a TFDS data_dir
    c.validation_size = 0  # training examples held out for validation (fixed split, see data.py)
    c.validation_seed = 0  # seed of that split (independent of the training seed)
    c.augment = False  # random crop (pad 4) + horizontal flip, for the CIFAR-style setups
    # Model.
    c.model = "mlp"  # mlp | lenet5 | vgg16 | mobilenetv2
    c.hidden = (300, 100)  # MLP hidden widths
    # Sparse training: methods may be a comma-separated list, e.g. "dense,rigl,ggr".
    c.method = "ggr"  # dense | static | set | rigl | snfs | ggr | gmp
    c.init = "erk"  # uniform | erk (initial layer densities)
    c.sparsity = 0.95
    c.dense_first = False  # uniform init only: keep the first sparsifiable layer dense (RigL)
    c.delta_t = 100  # steps between topology updates
    c.drop_fraction = 0.3  # alpha: fraction dropped at the first update, cosine-decayed to 0
    c.end_fraction = 0.75  # t_end as a fraction of the total number of training steps
    c.ggr_rho = 1.0  # GGR: fraction of regrown weights placed by gradient (rest random)
    c.ggr_signal = "mean"  # GGR: batch | mean | ema | mean_abs (see gj.ggr)
    c.ggr_normalize = "l2"  # GGR: none | l2 | rms | mean | max | weight (see gj.ggr)
    c.ggr_unit_floor = False  # GGR: the prune keeps one active weight per output unit
    c.signal_decay = 0.9  # GGR's "ema" signal: decay of the gradient EMA
    c.min_active = -1  # fewest active weights per layer in total; -1: shape[-1] (library default)
    c.snfs_momentum = 0.9  # SNFS: EMA coefficient of the gradient momentum it allocates by
    c.topology_update = "separate"  # separate (own jitted step) | cond (lax.cond in the train step)
    # Optimisation.
    c.optimizer = "sgd"  # sgd | adam
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 5e-4
    c.lr_schedule = "cosine"  # cosine | step | constant
    c.warmup_epochs = 0.0
    c.lr_decay_epochs = ()  # step schedule: epochs where the rate is multiplied by lr_decay_factor
    c.lr_decay_factor = 0.1
    c.label_smoothing = 0.0
    c.batch_size = 128
    c.eval_batch_size = 500
    c.num_epochs = 10
    c.num_train_steps = (
        -1
    )  # > 0: stop after this many steps (smoke tests); the schedule keeps num_epochs
    c.steps_per_eval = -1  # > 0: evaluate on this many test batches only
    # Bookkeeping.
    c.seed = 0
    c.checkpoint_every_epochs = 1
    c.checkpoint_every_steps = 0  # > 0: also checkpoint every this many steps
    c.keep_checkpoints = 2
    return c
