"""Loading, output writing, samplers and other helpers."""
