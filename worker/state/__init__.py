"""State: checkpoints, the watermark ledger and resume."""
