"""medmerge: adapt open LLMs to clinical work by merging weights instead of retraining.

The core package holds the domain logic and imports no ZenML: merge methods, the
streaming merge engine, compatibility checks, benchmark suites, Pareto selection,
SFT, metrics, data validation, registry helpers, figures and the CLI.
"""

__version__ = "0.1.0"
