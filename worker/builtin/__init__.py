"""The built-in models: tiny (random weights, generated on first use), tiny SDXL (+ refiner) and
the trained shapes model. Files and loaders only: no serving logic."""
