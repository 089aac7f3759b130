"""Running each run's SuperLink on Kubernetes: one namespace per run (see :mod:`.launcher`)."""
