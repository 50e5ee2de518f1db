"""`uds dashboard`: a web page of the cluster, live (doc/dashboard.md)."""
