"""`python -m synalign_ray <command> …`: the same CLI as the `synalign` console script."""

import sys

from synalign_ray.cli import main

sys.exit(main())
