"""The regional model server: load an HF causal LM from a local path, quantize, batch, stream,
report health and load. Imports neither ``gateway`` nor ``geodb``."""
