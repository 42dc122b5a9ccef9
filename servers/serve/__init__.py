"""`switchgen serve`: the TGI-protocol HTTP app over the in-process engine, and its deployment files (plan, compose, merge)."""
