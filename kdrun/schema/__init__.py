"""The config's types, declared once: dataclass schemas that Hydra's ConfigStore holds and OmegaConf
checks at composition time (types, `Optional`, choices, unknown keys), in every launcher and job.

- `choice.Choice`: a value from a fixed set (`train.optimizer: sgd | rmsprop`).
- `root.Config`: the top level; the recipe schema is `kdrun.training.recipe.Recipe`, a method's is its
  `Config` (`kdrun.methods.*`), a dataset's is in `kdrun.data.config`, a schedule's in
  `kdrun.schedules.config`, a model's is made from its constructor's signature (`models.model_schema`),
  `local_gpus`'s is `launchers.LocalGpusConf`.
- `errors`: OmegaConf's and Hydra's exceptions in kdrun's one-paragraph form.
- `keys`: what OmegaConf lets through with `+` (a key the schema lacks) refused after composition.
- `kdrun.configs.register_configs` puts them all into the ConfigStore.
"""
