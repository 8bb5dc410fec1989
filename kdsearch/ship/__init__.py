"""Students a user can ship: a model → safetensors, TorchScript, ONNX (checked with onnxruntime) and a model
card (``export.py``); the final comparison's students kept as files and ``kdsearch export``'s retrain
(``students.py``).

Imports ``search`` and below; independent of ``report`` and ``parallel``.
"""
