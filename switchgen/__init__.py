"""switchgen: Switch Generation as a LangGraph graph.

Pretrained, finetuned and aligned checkpoints of one model family take turns writing one
response, a patch at a time; a switcher LM picks who writes next (arXiv 2510.09913).
"""

__version__ = "0.1.0"
