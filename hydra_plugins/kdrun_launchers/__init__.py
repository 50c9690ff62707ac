"""kdrun's Hydra launchers (found by Hydra's plugin scan of the `hydra_plugins` namespace package).

`hydra/launcher=local_gpus` (conf/hydra/launcher/local_gpus.yaml): several jobs of a sweep at once
on one machine, each in its own process pinned to one GPU.
`hydra/launcher=packed` (conf/hydra/launcher/packed.yaml): the jobs that can share batches and the
teacher's pass train together in one process (kdrun.packed).
"""
