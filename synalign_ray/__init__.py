"""synalign_ray: SynAlign (few-shot LLM synthetic data with distribution matching) as a Ray batch job.

Importing the package is cheap: it loads neither torch, ray nor vllm; each stage imports what it needs.
"""

__version__ = "0.1.0"
