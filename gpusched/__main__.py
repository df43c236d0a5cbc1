"""`python -m gpusched` runs the command line."""
from gpusched.cli import main

raise SystemExit(main())
