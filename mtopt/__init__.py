"""mtopt: open multi-task robot reinforcement learning after QT-Opt and MT-Opt.

The shared vocabulary lives here: specs, episodes, batches, the task registry, configs
and CEM; the components (`actors`, `replay`, `success_detectors`, `learners`) import only
these, and `mtopt.launch` / `mtopt.cli` assemble them.
"""

__version__ = "0.1.0"
