"""Tests of experiments/peers/ (python3 -m unittest discover -s tests/peers -t . from the repository root)."""
