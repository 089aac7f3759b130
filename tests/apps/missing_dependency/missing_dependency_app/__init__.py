"""missing-dependency-app: its ClientApp needs a package that is not installed (loading it fails)."""
