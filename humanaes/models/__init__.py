"""Model families (`expert/`: HumanAesExpert; `mini/`: the bundled humanaes-mini), their
shared heads, and the registry that `humanaes.load` / `create_model` / `humanaes models` read."""
