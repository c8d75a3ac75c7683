"""Layer 6: scenarios, notebook runner, sweeps and figures behind the CLI and notebooks."""
