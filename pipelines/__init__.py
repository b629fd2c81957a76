"""Ray orchestration over nestgen: tokenization, training, evaluation and serving steps."""
