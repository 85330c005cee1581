"""The run path: one straight line from a command to a finished run, shared by every entry point
(``involution.train``, ``involution.eval``) and every task.

- :mod:`~involution.runner.preflight`: bad input -> one line, before anything is written (the
  command line's keys and types, every range rule, directories, checkpoint files);
- :mod:`~involution.runner.build`: the one builder (data, the task's LightningModule, loggers,
  callbacks, trainer) from a composed config;
- :mod:`~involution.runner.lifecycle`: the wrapper that runs prepare -> build -> work and maps
  every outcome (ok, failed, diverged, preempted) to job.json, the exit status, W&B and the sweep;
- :mod:`~involution.runner.guards`: preemption signals and non-finite weights (a Lightning
  callback); :mod:`~involution.runner.resume`: atomic checkpoints, the checkpoint a run continues
  from, ``resume=``; :mod:`~involution.runner.loggers`: the logger group's factories;
  :mod:`~involution.runner.console`: what a run shows (config tree, model summary, header, close).
"""
