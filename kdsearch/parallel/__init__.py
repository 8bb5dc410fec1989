"""Many trials at once: worker processes and trial slots (``workers.py``), K trial threads feeding one stacked
model per device (``stacked_trials.py``), and the study's one teacher on every machine (``teacher_share.py``).

Imports ``search`` and below; never ``report``, ``ship`` or the commands.
"""
