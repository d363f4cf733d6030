"""The engine layer: `simulate`/`simulate_ensemble` (the solver object decides per-member diffrax or the batched
ensemble engine), model-class solver defaults, batches of members and experiments run on them."""
