"""``python -m experiments.reproduce [args]``: the same as ``gpusched reproduce [args]``."""
from experiments.reproduce.run import main

raise SystemExit(main())
