"""Scoring: the metrics, the evaluation of a folder against its masks and the
baseline methods the solver is compared with."""
