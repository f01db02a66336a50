# The plugin's config package: it mirrors zoo's conf/ tree (model/shared.yaml is an option of `model`).
