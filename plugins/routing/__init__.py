"""Routing: routers (``topk_softmax``, ``cosine_threshold``, ``spl``, ``dense``), their
auxiliary losses (SDL, sparsity, load balance, z-loss) and sparse token-to-expert dispatch.

Helper modules (``base``, ``losses``, ``dispatch``) register nothing; each router lives in a
plugin module of its own.
"""
