"""Everything that touches Ray: the Serve deployments (ingress, one per model, the usage
ledger), the ingress's clients for them (model calls with retry and failover, the ledger
with retry), Serve state polling, metrics export, and the builder that wires it all from
config.

May import every layer below. The only layer that imports Ray; never FastAPI directly.
"""
