"""`python -m synalign_ray <command> …`: the same CLI as the `synalign` console script."""

from synalign_ray.cli import entry

entry()
