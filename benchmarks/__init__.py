"""Speed measurements (decode, training, tokenization, FSDP, memory, serving under load, faults):
each runs as `python -m benchmarks.<name>` and writes its JSON to benchmarks/results/. Quality
experiments are in experiments/; speed is measured here, never asserted in tests."""
