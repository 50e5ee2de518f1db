"""A deterministic simulation of the whole chunk path: the real pure cores
exchanging real wire frames over a simulated network, driven by one seeded
random generator and a fake clock (doc/simulation.md)."""
