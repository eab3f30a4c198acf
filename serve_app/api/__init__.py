"""HTTP, and only here: the FastAPI app and its routes (`app`), the edge middleware that
authenticates, limits and logs every request (`edge`), the wire shapes of our, Cohere's,
Jina's and TEI's APIs with their translation to and from the internal types (`schemas`),
and the one table from domain error to status, error type and headers (`errors`).

May import: service, routing, model and the shared modules; FastAPI and Starlette. Never Ray.
"""
