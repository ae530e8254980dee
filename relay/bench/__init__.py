"""`relay bench`: the relay against the obvious alternatives, on one machine."""
