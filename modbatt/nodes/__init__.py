"""Layer 4: runtime roles wiring the sans-I/O protocol machines to stores and transports."""
