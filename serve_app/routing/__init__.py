"""Which model scores a request, and in what order the results come back: the router that
runs a decision (`router`) and the plain-Python policies it consults: model names, the
latency/accuracy budget, the cascade, traffic splits, shadow agreement, ranking, and the
live load view those decisions read (`loads`). Unit-tested in milliseconds.

May import: model and the shared modules. Never HTTP or Ray.
"""
