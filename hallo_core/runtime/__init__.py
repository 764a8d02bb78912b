"""How models execute: engine options resolved once (precision, memory preset, attention kernel, compile) and the
per-model attention kernel."""
