"""Networks: building a teacher or student by name (the model registry, the seed nets, torchvision archs, the
user's ``package.module:attr`` import paths, TorchScript and exported files), feature taps, checkpoints.

Imports only ``config`` and the shared helpers: no data, training or search.
"""
