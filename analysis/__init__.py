"""Analysis of `switchgen eval` outputs: who wrote where, author sequences and their effect,
single models against switching, tokens and cost (`switchgen analyze`).

    from switchgen.analysis import analyze
    analyze(Path("runs/eval"))        # -> runs/eval/report/report.md with its PNGs
"""

from switchgen.analysis.report import analyze

__all__ = ["analyze"]
