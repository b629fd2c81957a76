"""Quality experiments and rehearsals: what a lever costs in sample quality, how many samples
or seeds a claim needs, the paper's configs at small scale and the full runs projected from
them. Each module runs as `python -m experiments.<name>` and writes its JSON to
experiments/results/. Speed measurements are in benchmarks/."""
