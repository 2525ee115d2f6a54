"""tfscale's Hydra config groups, shipped with the package so an installed tfscale (e.g. in a Vertex AI job)
composes the same experiments as a source checkout."""
