"""Data in: the log and catalogue schema, the synthetic world, adapters, labels, merge and features."""
