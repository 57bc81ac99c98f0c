"""Model families, their shared heads, and the registry that `humanaes.load` / `create_model` /
`humanaes models` read.

Each subpackage is one family (`expert/`: HumanAesExpert; `mini/`: the bundled humanaes-mini)
and registers itself with `humanaes.models.registry.register_family` when imported; the
registry imports every subpackage here, so a new family is one new folder."""
