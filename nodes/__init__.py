"""The steps of the graph: the switcher, one generator per candidate, and the routing between them."""
