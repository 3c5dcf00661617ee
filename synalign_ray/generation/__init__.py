"""Module 2 of SynAlign: latent attribute reasoning (two-stage prompting) on vLLM generator actors."""
