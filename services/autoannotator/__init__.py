"""AutoAnnotator: streaming annotation where small classifiers vote and an LLM reviews the doubtful."""

__version__ = "0.1.0"
