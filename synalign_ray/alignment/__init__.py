"""Module 3 of SynAlign: synthetic distribution alignment (MMD weights) and weighted resampling."""
